//! Shared library of the stowage programs: the configuration contract, logging, the
//! S3 client and storage backends, repository access and restic-compatible locks.

pub mod allocator;
pub mod backend;
pub mod discover;
pub mod env;
mod error;
pub mod location;
pub mod locks;
pub mod logging;
pub mod ratelimit;
pub mod repo;
pub mod result;
pub mod s3;
pub mod tags;

pub use error::Error;

#[cfg(feature = "k8s")]
pub mod k8s;
#[cfg(feature = "k8s")]
pub mod metrics;
#[cfg(feature = "k8s")]
pub mod schedule;
