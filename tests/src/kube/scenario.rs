//! What the scenarios on the real control plane share (`tests/tests/kube/`): waiting
//! for objects through watches, app volumes on node-local storage, Jobs' outcomes.

use ::kube::api::{Api, PostParams};
use ::kube::runtime::{WatchStreamExt, watcher};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use serde_json::json;

use super::{LOCAL_CLASS, WAIT};

/// The first object of `api` matching `labels`, awaited through a watch.
pub async fn first_with_labels<K>(api: Api<K>, labels: &str, what: &str) -> K
where
    K: ::kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let stream = watcher(api, watcher::Config::default().labels(labels))
        .applied_objects()
        .boxed();
    let first = tokio::time::timeout(WAIT, stream.into_future())
        .await
        .unwrap_or_else(|_| panic!("no {what} after {:?}", WAIT));
    first
        .0
        .unwrap_or_else(|| panic!("watch of {what} ended"))
        .unwrap_or_else(|e| panic!("watch of {what}: {e}"))
}

/// A pod spec that Pod Security `restricted` admits.
pub fn restricted_pod_spec() -> serde_json::Value {
    json!({
        "restartPolicy": "Never",
        "securityContext": {"runAsNonRoot": true, "runAsUser": 65532,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "main", "image": "example.invalid/noop:1",
            "securityContext": {"allowPrivilegeEscalation": false,
                                "capabilities": {"drop": ["ALL"]}},
        }],
    })
}

/// A condition `type` of a Job is `True`.
pub fn job_has(job: &Job, type_: &str) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

/// Waits until Job `ns/name` completes or fails; returns it.
pub async fn finished_job(client: &::kube::Client, ns: &str, name: &str) -> Job {
    let jobs = Api::<Job>::namespaced(client.clone(), ns);
    let done = ::kube::runtime::wait::await_condition(jobs, name, |j: Option<&Job>| {
        j.is_some_and(|j| job_has(j, "Complete") || job_has(j, "Failed"))
    });
    tokio::time::timeout(WAIT, done)
        .await
        .unwrap_or_else(|_| panic!("Job {ns}/{name} not finished after {:?}", WAIT))
        .expect("watch job")
        .expect("job")
}

/// A PVC `name` of the node-local class with `labels`, bound because an app pod
/// (`app-<name>`, an image without a binary: it just runs) consumes it; returns the
/// claim and its volume's directory on the host, where the test writes what the app
/// would.
pub async fn app_volume(
    client: &::kube::Client,
    ns: &str,
    name: &str,
    labels: &[(&str, &str)],
) -> (PersistentVolumeClaim, std::path::PathBuf) {
    let labels: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let pvcs = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns);
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": LOCAL_CLASS,
                 "resources": {"requests": {"storage": "1Gi"}}},
    }))
    .unwrap();
    let pvc = pvcs
        .create(&PostParams::default(), &pvc)
        .await
        .expect("PVC");
    // A pod Pod Security `restricted` admits.
    let mut spec = restricted_pod_spec();
    spec["containers"][0]["image"] = json!("example.invalid/app:1");
    spec["containers"][0]["volumeMounts"] = json!([{"name": "data", "mountPath": "/srv"}]);
    spec["volumes"] = json!([{"name": "data", "persistentVolumeClaim": {"claimName": name}}]);
    let app: Pod =
        serde_json::from_value(json!({"metadata": {"name": format!("app-{name}")}, "spec": spec}))
            .unwrap();
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &app)
        .await
        .expect("app pod");
    let bound = ::kube::runtime::wait::await_condition(
        pvcs.clone(),
        name,
        |p: Option<&PersistentVolumeClaim>| {
            p.and_then(|p| p.status.as_ref()?.phase.as_deref()) == Some("Bound")
        },
    );
    let now = tokio::time::timeout(WAIT, bound)
        .await
        .unwrap_or_else(|_| panic!("PVC {ns}/{name} not bound after {:?}", WAIT))
        .expect("watch")
        .expect("pvc");
    let pv_name = now.spec.unwrap().volume_name.unwrap();
    let pv = Api::<PersistentVolume>::all(client.clone())
        .get(&pv_name)
        .await
        .unwrap();
    let dir = std::path::PathBuf::from(pv.spec.unwrap().local.unwrap().path);
    (pvc, dir)
}

/// Turns on the shared install between gc and the movers: a gc pass works on every
/// repository of the shared bucket and prunes under an exclusive lock, so a mover that
/// starts then fails `Locked` (exit 11; in a cluster the next pass retries it). A
/// scenario that runs movers on the shared install holds [`movers_turn`] (any number
/// at once), one that runs gc holds [`gc_turn`] (alone).
fn turns() -> &'static tokio::sync::RwLock<()> {
    static TURNS: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());
    &TURNS
}

/// See [`turns`]: for scenarios that run movers on the shared install.
pub async fn movers_turn() -> tokio::sync::RwLockReadGuard<'static, ()> {
    turns().read().await
}

/// See [`turns`]: for scenarios that run gc on the shared install.
pub async fn gc_turn() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    turns().write().await
}

/// A client with the identity of ServiceAccount `ns/name` as the API server sees it
/// (its user name and groups, in a client certificate of the cluster's CA).
pub async fn service_account_client(
    cp: &super::ControlPlane,
    ns: &str,
    name: &str,
) -> ::kube::Client {
    super::client_from(&cp.kubeconfig_for(
        &format!("system:serviceaccount:{ns}:{name}"),
        &[
            "system:serviceaccounts",
            &format!("system:serviceaccounts:{ns}"),
            "system:authenticated",
        ],
    ))
    .await
}

/// Returns once the API server enforces stowage's admission policy: `admitted` (a
/// server-side dry run of a request the policy denies) answers false. The API
/// server enforces a new binding once its admission plugin has loaded it, which no
/// object's status tells.
pub async fn until_policy_enforced<F, Fut>(admitted: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + WAIT;
    while admitted().await {
        assert!(
            std::time::Instant::now() < deadline,
            "the admission policy is not enforced after {WAIT:?}"
        );
        // Polling the API server's own state: there is no event to await.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Asserts that `result` is stowage's admission policy denying the request: a
/// ValidatingAdmissionPolicy denies as Invalid (422) unless it says otherwise.
pub fn assert_policy_denied<T: std::fmt::Debug>(result: Result<T, ::kube::Error>, what: &str) {
    match result {
        Err(::kube::Error::Api(e)) => {
            assert_eq!(e.code, 422, "{what}: {e:?}");
            assert!(
                e.message.contains("stowage-service-accounts"),
                "{what}: {e:?}"
            );
        }
        other => panic!("{what}: {other:?}"),
    }
}
