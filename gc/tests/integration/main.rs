//! gc's integration tests, one binary: passes on the fake API, repository verbs,
//! Garage and faults.

mod support;

mod api_faults;
mod faults;
mod pass;
mod repo_verbs;
mod s3;
