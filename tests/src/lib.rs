//! Test harness shared by the crates' integration tests and the end-to-end scenarios:
//! a real S3 server process (Garage) on loopback, a fault-injecting proxy in front of
//! it, and generators of directory trees with every kind of entry a volume can hold.

pub mod bins;
pub mod fakeapi;
pub mod garage;
pub mod proxy;
pub mod pushgateway;
pub mod sim;
pub mod trees;

use std::net::TcpListener;

/// A free TCP port on loopback (bound and released; good enough for test servers
/// that are started right away).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
