//! The documentation says what the code does, compared mechanically from the
//! sources themselves, so that a key, command, option or log event added to
//! the code without its documentation (or the other way round) fails here:
//!
//! - every configuration key the parser reads (`Config::parse` in
//!   src/config.rs, one line per key), with its default and its range, in
//!   README.md's configuration table and in zdrestart.json(5);
//! - every command and option the command-line parsers of `zdrestart` and
//!   `zdrestartctl` accept, in their `--help` (the real binaries' output)
//!   and their man pages, and nothing more;
//! - every log `event` the code writes, in zdrestart(8)'s list and
//!   ARCHITECTURE.md's, and every event name the docs mention, in the code.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_root().join(rel)).unwrap_or_else(|e| panic!("read {}: {}", rel, e))
}

/// The text of the first `fn name` in `src`, to its closing brace.
fn body<'a>(src: &'a str, name: &str) -> &'a str {
    let start = src.find(&format!("fn {}(", name)).unwrap_or_else(|| panic!("fn {} not found", name));
    // Its closing brace is at the indentation of its line.
    let line_start = src[..start].rfind('\n').map_or(0, |i| i + 1);
    let indent = src[line_start..].len() - src[line_start..].trim_start().len();
    let close = format!("\n{}}}\n", " ".repeat(indent));
    let rest = &src[start..];
    let end = rest.find(&close).map_or(rest.len(), |i| i + close.len());
    &rest[..end]
}

/// The quoted strings of `text`.
fn quoted(text: &str) -> Vec<String> {
    text.split('"').skip(1).step_by(2).map(str::to_string).collect()
}

/// A key the parser reads: name, reader, its arguments after the name.
#[derive(Debug)]
struct Key {
    name: String,
    params: bool,
    reader: String,
    args: Vec<String>,
}

/// Every `k.reader("name", args...)` and `p.reader("name", ...)` of
/// `Config::parse`.
fn parser_keys(config_rs: &str) -> Vec<Key> {
    let parse = body(config_rs, "parse");
    let mut keys = Vec::new();
    for (prefix, params) in [("k.", false), ("p.", true)] {
        let mut rest = parse;
        while let Some(i) = rest.find(prefix) {
            let after = &rest[i + 2..];
            rest = after;
            let Some(open) = after.find("(\"") else { continue };
            let reader = &after[..open];
            if reader.is_empty() || !reader.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                continue;
            }
            let inner = &after[open + 1..];
            let close = matching_paren(inner);
            let mut args = split_args(&inner[..close]);
            let name = args.remove(0).trim_matches('"').to_string();
            keys.push(Key { name, params, reader: reader.to_string(), args });
        }
    }
    keys
}

fn matching_paren(s: &str) -> usize {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' if depth == 0 => return i,
            ')' | ']' => depth -= 1,
            _ => {}
        }
    }
    panic!("unbalanced: {}", s)
}

fn split_args(s: &str) -> Vec<String> {
    let (mut out, mut cur, mut depth) = (Vec::new(), String::new(), 0);
    for c in s.chars() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' if depth == 0 => {
                out.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// A default written as a constant of src/config.rs, resolved.
fn resolve(config_rs: &str, expr: &str) -> Option<String> {
    if let Some(n) = expr.strip_prefix("Duration::from_secs(").and_then(|s| s.strip_suffix(')')) {
        return Some(n.to_string());
    }
    if expr.starts_with("DEFAULT_") {
        let line = config_rs.lines().find(|l| l.contains(&format!("const {}:", expr)))?;
        let value = line.split('=').nth(1)?.trim().trim_end_matches(';');
        return resolve(config_rs, value).or_else(|| Some(value.trim_matches('"').to_string()));
    }
    if let Some(level) = expr.strip_prefix("log::LevelFilter::") {
        return Some(level.to_ascii_lowercase());
    }
    (expr.parse::<f64>().is_ok() || expr == "true" || expr == "false" || expr.starts_with('"')).then(|| expr.trim_matches('"').to_string())
}

/// What the docs must say of a key: (default, range, choices). A default
/// the parser computes (watchdogTimeout's) is None.
fn expectations(config_rs: &str, parse: &str, k: &Key) -> (Option<String>, Option<(String, String)>, Vec<String>) {
    match k.reader.as_str() {
        "int" => (Some(k.args[0].clone()), Some((k.args[1].clone(), k.args[2].clone())), vec![]),
        "choice" => {
            // The choices: an array literal, inline or bound to a name just before.
            let list = if k.args[0].starts_with("&[") {
                k.args[0].clone()
            } else {
                let name = k.args[0].trim_start_matches('&');
                let at = parse.find(&format!("let {} = [", name)).expect("the choices' array");
                parse[at..].lines().next().unwrap().to_string()
            };
            let pairs: Vec<String> = quoted(&list);
            // The default: the string paired with the default variant.
            let variant = &k.args[1];
            let at = list.find(&format!(", {})", variant)).expect("default among the choices");
            let default = quoted(&list[..at]).pop();
            (default, None, pairs)
        }
        "text" | "boolean" | "seconds" | "seconds_or_zero" | "level" | "dbname" => {
            (k.args.first().and_then(|a| resolve(config_rs, a)), None, vec![])
        }
        _ => (None, None, vec![]),
    }
}

/// README.md's configuration table row of a top-level key.
fn readme_row<'a>(readme: &'a str, key: &str) -> Option<&'a str> {
    readme.lines().find(|l| {
        l.starts_with("| `") && l.split('|').nth(1).is_some_and(|c| c.split(',').any(|k| k.trim() == format!("`{}`", key)))
    })
}

/// zdrestart.json(5)'s `.It Ic key Pq ...` line.
fn man_item<'a>(man: &'a str, key: &str) -> Option<&'a str> {
    man.lines().find(|l| l.starts_with(&format!(".It Ic {} ", key)) || *l == format!(".It Ic {}", key))
}

#[test]
fn every_config_key_default_and_range_is_documented() {
    let config_rs = read("src/config.rs");
    let parse = body(&config_rs, "parse");
    let readme = read("README.md");
    let man = read("man/zdrestart.json.5");
    let keys = parser_keys(&config_rs);
    assert!(keys.len() >= 25, "the parser's keys were not found: {:?}", keys);
    let params_row = readme_row(&readme, "params").expect("README: the params row");
    let mut missing = Vec::new();
    for k in &keys {
        let (default, range, choices) = expectations(&config_rs, parse, k);
        let item = man_item(&man, &k.name);
        if item.is_none() {
            missing.push(format!("zdrestart.json(5): no `.It Ic {}`", k.name));
        }
        let item = item.unwrap_or("");
        if k.params {
            if !params_row.contains(&format!("`{}`", k.name)) {
                missing.push(format!("README: params row lacks `{}`", k.name));
            }
            if let Some(d) = &default {
                if !params_row.contains(&format!("default {}", d)) && !params_row.contains(&format!("default `{}`", d)) {
                    missing.push(format!("README: params.{} default {} not in the params row", k.name, d));
                }
                if !item.contains(&format!("default {}", d)) && !item.contains(&format!("default Qq {}", d)) {
                    missing.push(format!("zdrestart.json(5): params.{} default {}: {}", k.name, d, item));
                }
            }
            continue;
        }
        let Some(row) = readme_row(&readme, &k.name) else {
            missing.push(format!("README: no configuration table row for `{}`", k.name));
            continue;
        };
        if let Some(d) = &default {
            let in_readme = [format!("`{}`", d), format!("`\"{}\"`", d)];
            if !in_readme.iter().any(|w| row.contains(w.as_str())) {
                missing.push(format!("README: `{}` default {} not in its row: {}", k.name, d, row));
            }
            let in_man = [format!("default {}", d), format!("default Qq {}", d), format!("default \\(dq{}\\(dq", d), format!("default Li {}", d)];
            if !in_man.iter().any(|w| item.contains(w.as_str())) {
                missing.push(format!("zdrestart.json(5): `{}` default {} not in: {}", k.name, d, item));
            }
        }
        if let Some((lo, hi)) = &range {
            if !row.contains(&format!("{}..{}", lo, hi)) {
                missing.push(format!("README: `{}` range {}..{} not in its row: {}", k.name, lo, hi, row));
            }
            if !item.contains(&format!("from {} to {}", lo, hi)) {
                missing.push(format!("zdrestart.json(5): `{}` range from {} to {} not in: {}", k.name, lo, hi, item));
            }
        }
        for c in &choices {
            if !row.contains(&format!("\"{}\"", c)) || !item.contains(&format!("\\(dq{}\\(dq", c)) {
                missing.push(format!("`{}`: choice \"{}\" missing in README's row or zdrestart.json(5)", k.name, c));
            }
        }
    }
    // And no key documented that the parser does not read.
    let known: BTreeSet<&str> = keys.iter().filter(|k| !k.params).map(|k| k.name.as_str()).collect();
    let section = readme.split("## Configuration").nth(1).expect("README: a Configuration section");
    let table_end = section.find("\n\n").unwrap_or(section.len());
    for row in section[..table_end].lines().filter(|l| l.starts_with("| `")) {
        for cell in row.split('|').nth(1).unwrap().split(',') {
            let name = cell.trim().trim_matches('`');
            if !known.contains(name) {
                missing.push(format!("README documents `{}`, which the parser does not read", name));
            }
        }
    }
    assert!(missing.is_empty(), "documentation and parser disagree:\n{}", missing.join("\n"));
}

/// `BIN --help`, as run.
fn help(bin: std::path::PathBuf) -> String {
    let mut cmd = Command::new(bin);
    cmd.arg("--help");
    scrub_env(&mut cmd);
    let (st, out, err) = run_cmd(&mut cmd, Duration::from_secs(30));
    assert!(st.success(), "--help: {}", err);
    out
}

/// `-x`/`--xyz` words of a text (help output, or a parser's match arms).
fn options(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for w in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')) {
        let long = w.len() > 2 && w.starts_with("--") && w[2..].bytes().all(|b| b.is_ascii_lowercase() || b == b'-');
        let short = w.len() == 2 && w.starts_with('-') && w.as_bytes()[1].is_ascii_alphabetic();
        if long || short {
            out.insert(w.to_string());
        }
    }
    out
}

/// The options of an mdoc page: `.Fl x` and `.Fl \-long\-name`.
fn man_options(man: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for l in man.lines() {
        let mut words = l.split_whitespace().peekable();
        while let Some(w) = words.next() {
            if w == "Fl" || w == ".Fl" {
                if let Some(o) = words.peek() {
                    let o = o.replace("\\-", "-").trim_end_matches([',', ';', '.']).to_string();
                    out.insert(format!("-{}", o));
                }
            }
        }
    }
    out
}

#[test]
fn every_command_and_option_is_in_help_and_man_page() {
    let mut problems = Vec::new();
    // zdrestartctl: the parser's commands and options.
    let src = read("src/bin/zdrestartctl/main.rs");
    let commands: BTreeSet<String> = body(&src, "parse_command")
        .lines()
        .filter_map(|l| l.strip_prefix("        \"").and_then(|r| r.split_once("\" =>")).map(|(c, _)| c.to_string()))
        .collect();
    assert!(commands.len() >= 8, "{:?}", commands);
    let parsed: BTreeSet<String> = options(body(&src, "parse_options")).union(&options(body(&src, "parse_command"))).cloned().collect();
    let out = help(ctl_bin());
    let man = read("man/zdrestartctl.8");
    let synopsis = man.split(".Sh DESCRIPTION").next().unwrap();
    let help_commands: BTreeSet<String> = out
        .split("Commands:")
        .nth(1)
        .unwrap()
        .split("Options:")
        .next()
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("  ").filter(|r| r.starts_with(|c: char| c.is_ascii_lowercase())))
        .map(|r| r.split_whitespace().next().unwrap().to_string())
        .collect();
    let man_commands: BTreeSet<String> =
        synopsis.lines().filter_map(|l| l.strip_prefix(".Cm ")).flat_map(|r| r.split(" | ").map(|c| c.trim().to_string())).filter(|c| c != "restore").collect();
    if commands != help_commands {
        problems.push(format!("zdrestartctl: parser commands {:?} != --help commands {:?}", commands, help_commands));
    }
    if commands != man_commands {
        problems.push(format!("zdrestartctl: parser commands {:?} != zdrestartctl(8) SYNOPSIS {:?}", commands, man_commands));
    }
    compare("zdrestartctl", &parsed, &options(&out), &man_options(&man), &mut problems);

    // zdrestart: the run modes' options (the two internal ones of an
    // upgrade are documented in zdrestart(8) and left out of --help).
    let src = read("src/bin/zdrestart.rs");
    let parsed = options(body(&src, "parse_args"));
    let out = help(master_bin());
    let man = read("man/zdrestart.8");
    compare("zdrestart", &parsed, &options(&out), &man_options(&man), &mut problems);
    for internal in ["--handover", "--handover-check"] {
        if !man_options(&man).contains(internal) {
            problems.push(format!("zdrestart(8) does not describe {}", internal));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The parser's options are all in --help and the man page, and --help
/// names no option the parser does not take.
fn compare(bin: &str, parsed: &BTreeSet<String>, help: &BTreeSet<String>, man: &BTreeSet<String>, problems: &mut Vec<String>) {
    for o in parsed {
        if !help.contains(o) {
            problems.push(format!("{}: option {} is parsed but not in --help", bin, o));
        }
        if !man.contains(o) {
            problems.push(format!("{}: option {} is parsed but not in its man page", bin, o));
        }
    }
    for o in help {
        if !parsed.contains(o) {
            problems.push(format!("{}: --help names {}, which the parser does not take", bin, o));
        }
    }
}

/// Event names (`word.word`) as the docs write them: in backticks or
/// quotes in Markdown, after `Qq`/`Li` in mdoc. File names are not events.
fn doc_events(text: &str, mdoc: bool) -> BTreeSet<String> {
    let families = ["master", "worker", "restart", "log", "upgrade", "canary"];
    let mut out = BTreeSet::new();
    for raw in text.split(|c: char| c.is_whitespace() || c == '`' || c == '"' || c == ',' || c == ';' || c == '(' || c == ')' || c == ':') {
        let Some((family, name)) = raw.split_once('.') else { continue };
        if !families.contains(&family) || name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase()) {
            continue;
        }
        if ["rs", "py", "sh", "json", "md", "toml", "conf", "sock", "pid", "db", "log", "service", "gz", "txt"].contains(&name) {
            continue;
        }
        let quoted = if mdoc {
            text.contains(&format!("Qq {}", raw)) || text.contains(&format!("Li {}", raw))
        } else {
            text.contains(&format!("`{}`", raw)) || text.contains(&format!("\"{}\"", raw))
        };
        if quoted {
            out.insert(raw.to_string());
        }
    }
    out
}

#[test]
fn every_log_event_is_documented_and_every_documented_one_exists() {
    // The code: `event = "x.y"` in log calls, and the progress facts' names.
    let mut code = BTreeSet::new();
    let mut stack = vec![repo_root().join("src")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            // Unit tests may forge records; only the code above them counts.
            let text = text.split("#[cfg(test)]").next().unwrap();
            for part in text.split("event = \"").skip(1) {
                code.insert(part.split('"').next().unwrap().to_string());
            }
            if p.ends_with("master/state/progress.rs") {
                // Only the facts logged with their own record (`logged_here`);
                // the others are logged by the code where they happen, or
                // are only the step names streamed to `zdrestartctl --wait`.
                let ev = body(text, "event");
                let here = body(text, "logged_here");
                for l in ev.lines().filter(|l| l.contains("=> \"")) {
                    let variant = l.trim().split([' ', '{']).next().unwrap();
                    if here.contains(&format!("{} ", variant)) {
                        code.insert(l.split("=> \"").nth(1).unwrap().split('"').next().unwrap().to_string());
                    }
                }
            }
        }
    }
    assert!(code.len() >= 20, "{:?}", code);
    let man = read("man/zdrestart.8");
    let list = man.split("Lifecycle records carry an").nth(1).expect("zdrestart(8): the list of events");
    let list = &list[..list.find("\n.Qq canary.rollback .").map_or(list.len(), |i| i + 22)];
    let man_list: BTreeSet<String> = list.lines().filter_map(|l| l.strip_prefix(".Qq ")).map(|e| e.trim_end_matches([' ', ',', '.']).to_string()).collect();
    let arch = read("ARCHITECTURE.md");
    let arch_list = arch.split("## 10. Logs").nth(1).expect("ARCHITECTURE.md: section 10");
    let arch_list = doc_events(&arch_list[..arch_list.find("\n## ").unwrap_or(arch_list.len())], false);
    let mut problems = Vec::new();
    for e in &code {
        if !man_list.contains(e) {
            problems.push(format!("event {} is logged but not in zdrestart(8)'s list", e));
        }
        if !arch_list.contains(e) {
            problems.push(format!("event {} is logged but not in ARCHITECTURE.md's section 10", e));
        }
    }
    // Every event any document names exists.
    for (doc, mdoc) in [
        ("README.md", false),
        ("ARCHITECTURE.md", false),
        ("man/zdrestart.8", true),
        ("man/zdrestartctl.8", true),
        ("man/zdrestart.json.5", true),
        ("man/zdrestart-worker.7", true),
    ] {
        for e in doc_events(&read(doc), mdoc) {
            if !code.contains(&e) {
                problems.push(format!("{} names the event {}, which the code never logs", doc, e));
            }
        }
    }
    // The advice printed to operators names only events that exist.
    for src in ["src/restart.rs", "src/control/advice.rs", "src/bin/zdrestartctl/main.rs", "src/bin/zdrestartctl/progress.rs", "src/bin/zdrestart.rs"] {
        for e in doc_events(&read(src), false) {
            if !code.contains(&e) {
                problems.push(format!("{} names the event {}, which the code never logs", src, e));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
