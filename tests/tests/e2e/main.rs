//! End-to-end scenarios on the fake API and the cluster simulator, one binary (the
//! real control plane's are in `tests/tests/kube/`): bad input, copy methods, the demo,
//! the fake API itself, the manifests, prewarm, RBAC, the scheduler, the simulator.

mod bad_input;
mod copy_methods_e2e;
mod demo;
mod fakeapi;
mod manifests;
mod prewarm_e2e;
mod prewarm_faults;
mod rbac;
mod scheduler_e2e;
mod sim;
