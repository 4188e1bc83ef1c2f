//! The Kubernetes side of the contract: names, labels, annotations, policies, object
//! builders and client set-up, defined once for every program.

pub mod contract;
pub mod copy;
pub mod credentials;
pub mod events;
pub mod grant;
pub mod hooks;
pub mod job_result;
pub mod mover_job;
pub mod naming;
pub mod pod_security;
pub mod policy;
pub mod pvc;
pub mod restore_kind;

use crate::Error;

/// A client for the cluster: the in-cluster service account, or `KUBECONFIG` /
/// `~/.kube/config` for manual runs.
pub async fn client() -> Result<kube::Client, Error> {
    client_with_timeout(std::time::Duration::from_secs(30)).await
}

/// Same, with a limit on each request (`STOWAGE_API_TIMEOUT_SECS`), so a hung API
/// server fails the pass clearly instead of holding the CronJob.
pub async fn client_with_timeout(timeout: std::time::Duration) -> Result<kube::Client, Error> {
    let mut config = kube::Config::infer().await.map_err(|e| {
        Error::Config(format!(
            "no Kubernetes API access: {e}. In a cluster this runs under its service \
             account; outside, set KUBECONFIG or create ~/.kube/config"
        ))
    })?;
    config.read_timeout = Some(timeout);
    config.write_timeout = Some(timeout);
    config.connect_timeout = Some(timeout);
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
            "cannot {action}: {} ({} {}){}",
            status.message,
            status.code,
            status.reason,
            transient_hint(status.code)
        ),
        other if is_timeout(other) => format!(
            "cannot {action}: the Kubernetes API did not answer in time ({other}); retry, or \
             raise STOWAGE_API_TIMEOUT_SECS"
        ),
        other => format!("cannot {action}: {other} (is the Kubernetes API reachable?)"),
    }
}

/// What to do about an API error that goes away by itself.
fn transient_hint(code: u16) -> &'static str {
    match code {
        409 => "; the object changed meanwhile: the next run reads it again and retries",
        429 | 500..=599 => {
            "; the API server failed the request: the next run retries it (or run again now)"
        }
        _ => "",
    }
}

/// Whether a kube error is a given HTTP status from the API.
pub fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// Whether the error is a request that timed out.
fn is_timeout(e: &kube::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        let text = s.to_string().to_ascii_lowercase();
        if text.contains("timed out") || text.contains("timeout") {
            return true;
        }
        src = s.source();
    }
    false
}
