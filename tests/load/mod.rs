//! The load generator of the restart tests, as `load` in a test file (`mod
//! load;`): it lives in the test harness crate (tests/common/load.rs).

pub use zdrestart_testkit::load::*;
