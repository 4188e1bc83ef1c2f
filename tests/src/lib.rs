//! Test harness shared by the crates' integration tests and the end-to-end scenarios:
//! a real S3 server process (Garage) on loopback, a fault-injecting proxy in front of
//! it, generators of directory trees with every kind of entry a volume can hold, the
//! fake Kubernetes API and the cluster simulator, a world with stowage installed in it,
//! a real Kubernetes control plane with a process kubelet and node-local storage
//! ([`kube`]), and a scan for secret values in everything the programs produced.

pub mod bins;
pub mod cli;
pub mod fakeapi;
pub mod garage;
pub mod gate;
pub mod kube;
pub mod podrun;
pub mod proxy;
pub mod pushgateway;
pub mod secrets;
pub mod sim;
pub mod tls;
pub mod trees;
pub mod world;

use std::net::TcpListener;

/// A typed object from its JSON (test set-up: panics on an invalid one).
pub fn obj<K: serde::de::DeserializeOwned>(v: serde_json::Value) -> K {
    serde_json::from_value(v).expect("valid object")
}

/// A free TCP port on loopback (bound and released; good enough for test servers
/// that are started right away).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
