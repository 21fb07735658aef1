mod common;
use common::*;
#[test]
fn mongo_harness() {
    let mut m = Mongo::start();
    assert!(port_accepts(m.port));
    let pid = m.pid().unwrap();
    m.restart();
    assert!(!pid_alive(pid));
    assert!(port_accepts(m.port));
    println!("{}", m.uri());
}
#[test]
fn free_ports_distinct() {
    let a: Vec<u16> = (0..50).map(|_| free_port()).collect();
    let mut b = a.clone(); b.sort(); b.dedup();
    assert_eq!(a.len(), b.len());
}
#[test]
fn http_client_against_python() {
    let d = TestDir::for_test();
    let port = free_port();
    let mut c = std::process::Command::new("python3").args(["-m","http.server","--bind","127.0.0.1",&port.to_string()]).current_dir(d.path()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    std::fs::write(d.join("x.json"), "{\"a\":1}").unwrap();
    assert!(wait_until(secs(10.0), || port_accepts(port)));
    let r = get(port, "/x.json");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["a"], 1);
    let r = get(port, "/nope");
    assert_eq!(r.status, 404);
    c.kill().unwrap(); c.wait().unwrap();
}
#[test]
fn proc_helpers() {
    let me = std::process::id() as i32;
    let s = proc_stat(me).unwrap();
    assert!(s.state == 'R' || s.state == 'S');
    let mut c = std::process::Command::new("sleep").arg("5").spawn().unwrap();
    assert!(live_children(me).contains(&(c.id() as i32)));
    assert!(fd_count(me) > 2);
    c.kill().unwrap();
    std::thread::sleep(secs(0.2));
    assert!(zombie_children(me).contains(&(c.id() as i32)));
    c.wait().unwrap();
}
#[test]
fn bunyan_check() {
    let d = TestDir::for_test();
    let p = d.join("l.log");
    std::fs::write(&p, "{\"v\":0,\"level\":30,\"name\":\"zdrestart\",\"hostname\":\"h\",\"pid\":1,\"time\":\"2026-01-01T00:00:00.000Z\",\"msg\":\"x\",\"component\":\"master\"}\n{\"v\":0,\"lev").unwrap();
    assert_eq!(parse_log(&p).len(), 1);
    std::fs::write(&p, "{\"v\":0,\"level\":30,\"name\":\"zdrestart\",\"hostname\":\"h\",\"pid\":1,\"time\":\"2026-01-01T00:00:00Z\",\"msg\":\"x\",\"component\":\"master\"}\n").unwrap();
    assert!(std::panic::catch_unwind(|| parse_log(&p)).is_err());
}
