//! prewarm's integration tests, one binary: the populator's rounds on the fake API,
//! the CRD, the index, snapshot lookup.

mod support;

mod api_faults;
mod crd;
mod index;
mod pass_io;
mod source;
