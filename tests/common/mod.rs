//! The shared test harness, as `common` in each test file (`mod common; use
//! common::*;`). It lives in the crate `zdrestart-testkit` beside this file
//! (tests/common/lib.rs and its modules: see there); this module only
//! re-exports it, so that nothing in it can be unused in one test binary.

pub use zdrestart_testkit::*;
