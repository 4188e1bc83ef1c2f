//! Hooks and point-in-time copies against the API: runs Velero-style hooks in the app's
//! containers through `pods/exec` (the kube client's WebSocket exec), makes the
//! temporary VolumeSnapshot or clone of a backup and waits until it is taken, and
//! removes those objects again. The order around them is in `pass.rs`:
//!
//! - `Snapshot`/`Clone`: record the owed post hooks on the PVC → pre hooks → snapshot
//!   or clone → wait until taken → post hooks → (restore PVC) → mover Job. The app is
//!   frozen only while the copy is cut, all within one pass.
//! - `Direct`: record → pre hooks → mover Job; the post hooks run when a later pass
//!   harvests the Job's result (also a failed, timed-out or vanished Job).
//!
//! A pass killed in between leaves the record ([`HookState`]) on the PVC: the next pass
//! runs the owed post hooks once the record's deadline passed.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{
    AttachParams, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Api, Client, ResourceExt};
use serde::{Deserialize, Serialize};
use stowage_common::k8s::contract::consistency;
use stowage_common::k8s::copy::{self, CopyMethod, CopySpec};
use stowage_common::k8s::hooks::{Hook, OnError, Outcome, Phase};
use stowage_common::k8s::{describe_kube_error, is_status};
use tokio::io::AsyncReadExt;

use crate::plan::PodHooks;

/// Post hooks owed for a backup, recorded on the PVC (annotation
/// [`consistency::HOOK_STATE`]) before the first pre hook runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HookState {
    /// The mover Job of that backup.
    pub job: String,
    /// Wall-clock time after which the pass that wrote this record is surely gone (its
    /// hook and copy timeouts all passed): another pass may run the post hooks.
    pub deadline: Timestamp,
    /// The post hooks to run: (pod, hook).
    pub post: Vec<(String, Hook)>,
}

impl HookState {
    pub fn parse(v: &str) -> Option<HookState> {
        serde_json::from_str(v).ok()
    }
}

/// Outcome of the hooks of one phase: the overall word and whether the backup must
/// fail (a failed hook with `on-error: Fail`), plus a line per failed hook.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PhaseResult {
    pub ran: bool,
    pub fail: bool,
    pub failures: Vec<String>,
    pub word: String,
}

impl PhaseResult {
    /// `Succeeded`, `Failed`, `TimedOut` or `None` (no hook).
    pub fn word(&self) -> &str {
        if self.ran { &self.word } else { "None" }
    }
}

/// Runs one hook in its pod's container and waits at most its timeout.
pub async fn run_hook(client: &Client, ns: &str, pod: &str, hook: &Hook) -> Outcome {
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    let ap = AttachParams::default()
        .container(hook.container.clone())
        .stdin(false)
        .stdout(true)
        .stderr(true);
    let run = async {
        let mut proc = api
            .exec(pod, hook.command.clone(), &ap)
            .await
            .map_err(|e| describe_kube_error_any(&e, &format!("exec into pod {ns}/{pod}")))?;
        let status = proc.take_status();
        let (mut out, mut err) = (proc.stdout(), proc.stderr());
        let read = |r: Option<tokio::io::ReadHalf<tokio::io::SimplexStream>>| async move {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf).await;
            }
            buf
        };
        let (_stdout, stderr) = tokio::join!(read(out.take()), read(err.take()));
        let status = match status {
            Some(s) => s.await,
            None => None,
        };
        let _ = proc.join().await;
        match status {
            Some(s) if s.status.as_deref() == Some("Success") => Ok(()),
            Some(s) => {
                let tail = String::from_utf8_lossy(&stderr);
                let tail = tail.trim();
                let tail: String = tail
                    .chars()
                    .rev()
                    .take(300)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                Err(format!(
                    "{}{}",
                    s.message.unwrap_or_else(|| "the command failed".into()),
                    if tail.is_empty() {
                        String::new()
                    } else {
                        format!(" (stderr: {tail})")
                    }
                ))
            }
            None => Err("the exec ended without an exit status".into()),
        }
    };
    match tokio::time::timeout(hook.timeout, run).await {
        Ok(Ok(())) => Outcome::Succeeded,
        Ok(Err(e)) => Outcome::Failed(e),
        Err(_) => Outcome::TimedOut,
    }
}

fn describe_kube_error_any(e: &kube::Error, action: &str) -> String {
    describe_kube_error(e, action)
}

/// Runs hooks one after the other. Pre hooks stop at the first failure with
/// `on-error: Fail`; post hooks all run whatever happens.
pub async fn run_phase(
    client: &Client,
    ns: &str,
    phase: Phase,
    hooks: &[(String, Hook)],
) -> PhaseResult {
    let mut r = PhaseResult {
        word: "Succeeded".into(),
        ..Default::default()
    };
    for (pod, hook) in hooks {
        r.ran = true;
        let outcome = run_hook(client, ns, pod, hook).await;
        tracing::info!(namespace = %ns, pod = %pod, container = %hook.container, phase = phase.as_str(), outcome = outcome.word(), "hook ran");
        if outcome.ok() {
            continue;
        }
        let what = match &outcome {
            Outcome::TimedOut => format!("timed out after {:?}", hook.timeout),
            Outcome::Failed(e) => e.clone(),
            Outcome::Succeeded => unreachable!(),
        };
        r.failures.push(format!(
            "{} hook {:?} in pod {pod} container {}: {what}",
            phase.as_str(),
            hook.command,
            hook.container
        ));
        if r.word == "Succeeded" {
            r.word = outcome.word().into();
        }
        if hook.on_error == OnError::Fail {
            r.fail = true;
            if phase == Phase::Pre {
                break;
            }
        }
    }
    r
}

/// The (pod, hook) pairs of one phase.
pub fn phase_hooks(hooks: &[PodHooks], phase: Phase) -> Vec<(String, Hook)> {
    hooks
        .iter()
        .filter_map(|p| {
            let h = match phase {
                Phase::Pre => p.pre.clone(),
                Phase::Post => p.post.clone(),
            }?;
            Some((p.pod.clone(), h))
        })
        .collect()
}

/// Deadline of a pass holding hooks, from the pass's clock `now`: every hook and copy
/// timeout, plus a margin for API calls.
pub fn deadline(hooks: &[PodHooks], copy_timeout: Option<Duration>, now: Timestamp) -> Timestamp {
    let hooks: Duration = hooks
        .iter()
        .flat_map(|p| [p.pre.as_ref(), p.post.as_ref()])
        .flatten()
        .map(|h| h.timeout)
        .sum();
    let total = hooks + copy_timeout.unwrap_or_default() + Duration::from_secs(10);
    now + jiff::SignedDuration::try_from(total).unwrap_or_default()
}

fn snapshots_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &copy::volume_snapshot_resource())
}

/// Creates the point-in-time copy (VolumeSnapshot, or clone PVC) and waits until it is
/// taken (snapshot `creationTime`/`readyToUse`; clone bound). An existing object of the
/// same name (a killed pass of the same backup) is used as it is. `selected_node`: for
/// clones of WaitForFirstConsumer classes, the node to provision on (the app's).
pub async fn take_copy(
    client: &Client,
    s: &CopySpec,
    selected_node: Option<&str>,
    timeout: Duration,
) -> Result<(), String> {
    let ns = &s.namespace;
    match s.method {
        CopyMethod::Direct => return Ok(()),
        CopyMethod::Snapshot => {
            let obj: DynamicObject = serde_json::from_value(copy::volume_snapshot(s))
                .map_err(|e| format!("VolumeSnapshot: {e}"))?;
            match snapshots_api(client, ns)
                .create(&PostParams::default(), &obj)
                .await
            {
                Ok(_) => {}
                Err(e) if is_status(&e, 409) => {}
                Err(e) if is_status(&e, 404) => {
                    return Err(format!(
                        "the cluster has no VolumeSnapshot API ({}): install the CSI \
                         snapshot CRDs and controller, or use copy method Clone or Direct",
                        describe_kube_error(&e, "create volumesnapshot")
                    ));
                }
                Err(e) => {
                    return Err(describe_kube_error(
                        &e,
                        &format!("create volumesnapshot {ns}/{}", s.job),
                    ));
                }
            }
        }
        CopyMethod::Clone => {
            let mut pvc = copy::copy_pvc(s).expect("clone");
            if let Some(n) = selected_node {
                pvc.metadata.annotations = Some(
                    [(
                        "volume.kubernetes.io/selected-node".to_string(),
                        n.to_string(),
                    )]
                    .into(),
                );
            }
            create_pvc(client, &pvc).await?;
        }
    }
    let start = std::time::Instant::now();
    loop {
        let state = match s.method {
            CopyMethod::Snapshot => match snapshots_api(client, ns).get_opt(&s.job).await {
                Ok(Some(o)) => copy::snapshot_taken(&serde_json::to_value(&o).unwrap_or_default())
                    .map_err(|e| format!("VolumeSnapshot {ns}/{} failed: {e}", s.job))?,
                Ok(None) => return Err(format!("VolumeSnapshot {ns}/{} disappeared", s.job)),
                Err(e) => {
                    return Err(describe_kube_error(
                        &e,
                        &format!("get volumesnapshot {ns}/{}", s.job),
                    ));
                }
            },
            _ => match Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
                .get_opt(&s.job)
                .await
            {
                Ok(Some(p)) => p.status.and_then(|st| st.phase).as_deref() == Some("Bound"),
                Ok(None) => return Err(format!("clone PVC {ns}/{} disappeared", s.job)),
                Err(e) => {
                    return Err(describe_kube_error(
                        &e,
                        &format!("get persistentvolumeclaim {ns}/{}", s.job),
                    ));
                }
            },
        };
        if state {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            return Err(format!(
                "the {} of PVC {} was not taken within {}s (STOWAGE_COPY_TIMEOUT_SECS): does \
                 the storage class support it{}?",
                if s.method == CopyMethod::Snapshot {
                    "VolumeSnapshot"
                } else {
                    "clone"
                },
                s.pvc,
                timeout.as_secs(),
                match (&s.method, &s.snapshot_class) {
                    (CopyMethod::Snapshot, Some(c)) =>
                        format!(", is VolumeSnapshotClass {c} right"),
                    _ => String::new(),
                }
            ));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn create_pvc(client: &Client, pvc: &PersistentVolumeClaim) -> Result<(), String> {
    let ns = pvc.namespace().unwrap_or_default();
    match Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), pvc)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 409) => Ok(()),
        Err(e) => Err(describe_kube_error(
            &e,
            &format!("create persistentvolumeclaim {ns}/{}", pvc.name_any()),
        )),
    }
}

/// Creates the PVC restored from the snapshot (the `Snapshot` method's volume).
pub async fn restore_pvc(client: &Client, s: &CopySpec) -> Result<(), String> {
    match copy::copy_pvc(s) {
        Some(pvc) if s.method == CopyMethod::Snapshot => create_pvc(client, &pvc).await,
        _ => Ok(()),
    }
}

/// Deletes the temporary objects of one backup (by their Job label). Missing ones and a
/// cluster without the snapshot API are fine.
pub async fn remove_copies(client: &Client, ns: &str, job: &str) -> Result<usize, String> {
    let sel = format!(
        "{}={},{}={job}",
        stowage_common::k8s::contract::app::MANAGED_BY,
        stowage_common::k8s::contract::app::STOWAGE,
        consistency::LABEL_JOB
    );
    let lp = ListParams::default().labels(&sel);
    let mut n = 0;
    let pvcs = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns);
    for p in pvcs
        .list(&lp)
        .await
        .map_err(|e| describe_kube_error(&e, &format!("list persistentvolumeclaims in {ns}")))?
        .items
    {
        delete_pvc(client, ns, &p.name_any()).await?;
        n += 1;
    }
    let snaps = snapshots_api(client, ns);
    match snaps.list(&lp).await {
        Ok(l) => {
            for o in l.items {
                delete_snapshot(client, ns, &o.name_any()).await?;
                n += 1;
            }
        }
        Err(e) if is_status(&e, 404) => {}
        Err(e) => {
            return Err(describe_kube_error(
                &e,
                &format!("list volumesnapshots in {ns}"),
            ));
        }
    }
    Ok(n)
}

pub async fn delete_pvc(client: &Client, ns: &str, name: &str) -> Result<(), String> {
    match Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .delete(name, &DeleteParams::background())
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 404) => Ok(()),
        Err(e) => Err(describe_kube_error(
            &e,
            &format!("delete persistentvolumeclaim {ns}/{name}"),
        )),
    }
}

pub async fn delete_snapshot(client: &Client, ns: &str, name: &str) -> Result<(), String> {
    match snapshots_api(client, ns)
        .delete(name, &DeleteParams::background())
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 404) => Ok(()),
        Err(e) => Err(describe_kube_error(
            &e,
            &format!("delete volumesnapshot {ns}/{name}"),
        )),
    }
}

/// Every temporary VolumeSnapshot of stowage in the cluster (empty without the API):
/// (namespace, name, job label, creation time).
pub async fn list_snapshots(
    client: &Client,
) -> Result<Vec<(String, String, String, Option<Timestamp>)>, String> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &copy::volume_snapshot_resource());
    let lp = ListParams::default().labels(&copy::copy_selector(consistency::COMPONENT_SNAPSHOT));
    match api.list(&lp).await {
        Ok(l) => Ok(l
            .items
            .into_iter()
            .map(|o| {
                (
                    o.namespace().unwrap_or_default(),
                    o.name_any(),
                    o.labels()
                        .get(consistency::LABEL_JOB)
                        .cloned()
                        .unwrap_or_default(),
                    o.metadata.creation_timestamp.as_ref().map(|t| t.0),
                )
            })
            .collect()),
        Err(e) if is_status(&e, 404) => Ok(Vec::new()),
        Err(e) if is_status(&e, 403) => {
            tracing::warn!(
                "{} (apply the kustomize component `consistency` to use the Snapshot copy \
                 method)",
                describe_kube_error(&e, "list volumesnapshots in all namespaces")
            );
            Ok(Vec::new())
        }
        Err(e) => Err(describe_kube_error(
            &e,
            "list volumesnapshots in all namespaces",
        )),
    }
}

/// Merge-patches PVC annotations (null removes).
pub async fn patch_annotations(
    client: &Client,
    ns: &str,
    name: &str,
    annotations: serde_json::Value,
) -> Result<(), String> {
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"annotations": annotations}})),
        )
        .await
        .map(|_| ())
        .map_err(|e| describe_kube_error(&e, &format!("patch persistentvolumeclaim {ns}/{name}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_state_round_trips_and_deadline_covers_every_timeout() {
        let hook = Hook {
            phase: Phase::Post,
            command: vec!["/bin/true".into()],
            container: "app".into(),
            on_error: OnError::Continue,
            timeout: Duration::from_secs(20),
        };
        let st = HookState {
            job: "j".into(),
            deadline: "2026-11-23T10:00:00Z".parse().unwrap(),
            post: vec![("pod-0".into(), hook.clone())],
        };
        let text = serde_json::to_string(&st).unwrap();
        assert_eq!(HookState::parse(&text), Some(st));
        assert_eq!(HookState::parse("garbage"), None);
        let hooks = [PodHooks {
            pod: "pod-0".into(),
            pre: Some(Hook {
                phase: Phase::Pre,
                ..hook.clone()
            }),
            post: Some(hook),
        }];
        let now: Timestamp = "2026-11-23T10:00:00Z".parse().unwrap();
        let d = deadline(&hooks, Some(Duration::from_secs(60)), now);
        let secs = d.as_second() - now.as_second();
        assert!((109..=111).contains(&secs), "{secs}");
    }
}
