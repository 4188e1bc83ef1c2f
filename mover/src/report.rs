//! The run result lives in `common` (the scheduler and prewarm read it back).

pub use stowage_common::result::{RunResult, reason};
