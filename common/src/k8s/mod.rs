//! The Kubernetes side of the contract: names, labels, annotations, policies, object
//! builders and client set-up, defined once for every program.

pub mod contract;
pub mod credentials;
pub mod events;
pub mod mover_job;
pub mod naming;
pub mod pod_security;
pub mod policy;

use crate::Error;

/// A client for the cluster: the in-cluster service account, or `KUBECONFIG` /
/// `~/.kube/config` for manual runs.
pub async fn client() -> Result<kube::Client, Error> {
    let config = kube::Config::infer().await.map_err(|e| {
        Error::Config(format!(
            "no Kubernetes API access: {e}. In a cluster this runs under its service \
             account; outside, set KUBECONFIG or create ~/.kube/config"
        ))
    })?;
    kube::Client::try_from(config)
        .map_err(|e| Error::Config(format!("cannot set up the Kubernetes client: {e}")))
}

/// One line saying which API call failed and what to do, for a `kube` error.
/// `action` is what was attempted, e.g. `list persistentvolumeclaims in all namespaces`.
pub fn describe_kube_error(e: &kube::Error, action: &str) -> String {
    match e {
        kube::Error::Api(status) if status.code == 403 => format!(
            "permission denied to {action}: {}. The service account needs this permission: \
             apply the RBAC rules shipped in kustomize/ (or add the verb and resource to its \
             Role/ClusterRole)",
            status.message
        ),
        kube::Error::Api(status) if status.code == 401 => format!(
            "not authenticated to {action}: {} (service account token or kubeconfig \
             credentials invalid)",
            status.message
        ),
        kube::Error::Api(status) => format!(
            "cannot {action}: {} ({} {})",
            status.message, status.code, status.reason
        ),
        other => format!("cannot {action}: {other} (is the Kubernetes API reachable?)"),
    }
}

/// Whether a kube error is a given HTTP status from the API.
pub fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}
