//! The mover's integration tests, one binary: against Garage, the local backend, the
//! real restic CLI, faults and kills.

mod support;

mod damage;
mod faults;
mod kill;
mod local;
mod restic_interop;
mod s3;
