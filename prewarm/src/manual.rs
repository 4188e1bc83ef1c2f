//! Manual restore (incidents): `stowage-prewarm restore-now`, run as a Job created from
//! the suspended CronJob `stowage-manual-restore` (kustomize/app/restore-template.yaml).
//!
//! A Job created with `kubectl create job --from=cronjob/...` takes no arguments, so
//! what to restore is written on the target PVC:
//!
//! ```text
//! flux suspend kustomization APP          # else Flux scales the app up mid-restore
//! kubectl -n APP scale deploy/APP --replicas=0
//! kubectl -n APP annotate pvc DATA stowage.io/restore-now=latest          # or a snapshot id
//! kubectl -n APP annotate pvc DATA stowage.io/restore-replace=true        # only to overwrite
//! kubectl -n stowage create job --from=cronjob/stowage-manual-restore restore-$(date +%s)
//! flux resume kustomization APP           # once stowage.io/restore-result is in
//! ```
//!
//! For every PVC carrying `stowage.io/restore-now`, the run starts one restore mover Job
//! in the PVC's namespace (with the PVC's own Secret, or a per-run Secret derived from
//! the central one), waits for it, and writes the outcome on the PVC
//! (`stowage.io/restore-result`, Event) while removing the request. The mover refuses a
//! non-empty volume unless `stowage.io/restore-replace=true`. A PVC still used by a
//! pod is refused, when the request is taken and again just before the mover may write:
//! the mover Job is created suspended and only let start by a later round that finds no
//! pod using the volume (one that appeared meanwhile, say scaled up by Flux, gets the
//! Job deleted unstarted). Two runs at once serve a request once: the Job's name is
//! recorded on the PVC under a resourceVersion precondition before the Job is created.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    Namespace, ObjectReference, PersistentVolume, PersistentVolumeClaim, Pod, Secret,
};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use stowage_common::k8s::contract::{self, user};
use stowage_common::k8s::credentials::{self, RunCredentials};
use stowage_common::k8s::grant;
use stowage_common::k8s::job_result;
use stowage_common::k8s::mover_job::{self, MoverJobSpec, Placement, RunAs};
use stowage_common::k8s::naming::{self, Operation};
use stowage_common::k8s::pvc::{parse_user, quantity_bytes};
use stowage_common::k8s::{describe_kube_error, is_status};
use stowage_common::result::{RunResult, reason as result_reason};

use crate::pass::{self, Ctx};

/// The request: a snapshot id (prefix) or `latest`.
pub const REQUEST: &str = "stowage.io/restore-now";
/// `true`: the volume's content is replaced (files not in the snapshot are deleted).
pub const REPLACE: &str = "stowage.io/restore-replace";
/// The restore Job serving the request (set by the run that took it).
pub const JOB: &str = "stowage.io/restore-job";
/// The outcome of the last manual restore (`restored <id> ...`, `refused: ...`, `failed: ...`).
pub const RESULT: &str = "stowage.io/restore-result";

/// Event reasons of manual restores.
pub mod reason {
    pub const STARTED: &str = "ManualRestoreStarted";
    pub const SUCCEEDED: &str = "ManualRestoreSucceeded";
    pub const REFUSED: &str = "ManualRestoreRefused";
    pub const FAILED: &str = "ManualRestoreFailed";
}

/// What a run did: `namespace/name` → outcome.
#[derive(Debug, Default)]
pub struct Summary {
    pub done: BTreeMap<String, String>,
    pub pending: BTreeMap<String, String>,
    pub errors: Vec<String>,
}

/// A request on one PVC.
#[derive(Debug, Clone)]
struct Request {
    namespace: String,
    name: String,
    uid: String,
    resource_version: String,
    snapshot: String,
    replace: bool,
    job: Option<String>,
    secret: Option<String>,
    repository: Option<String>,
    mover_user: Option<String>,
    volume: Option<String>,
    bound: bool,
    /// Capacity of the volume (the default deadline grows with it).
    capacity_bytes: u64,
    /// `stowage.io/mover-deadline`.
    deadline: Option<String>,
}

impl Request {
    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    fn reference(&self) -> ObjectReference {
        ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("PersistentVolumeClaim".into()),
            name: Some(self.name.clone()),
            namespace: Some(self.namespace.clone()),
            uid: Some(self.uid.clone()),
            ..Default::default()
        }
    }
}

fn request(p: &PersistentVolumeClaim) -> Option<Request> {
    let a = p.metadata.annotations.as_ref()?;
    let snapshot = a.get(REQUEST)?.trim().to_string();
    if p.metadata.deletion_timestamp.is_some() {
        return None;
    }
    Some(Request {
        namespace: p.namespace().unwrap_or_default(),
        name: p.name_any(),
        uid: p.metadata.uid.clone().unwrap_or_default(),
        resource_version: p.resource_version().unwrap_or_default(),
        snapshot: if snapshot.is_empty() {
            "latest".into()
        } else {
            snapshot
        },
        replace: a.get(REPLACE).is_some_and(|v| v == "true"),
        job: a.get(JOB).filter(|j| !j.is_empty()).cloned(),
        secret: a.get(user::SECRET).filter(|s| !s.is_empty()).cloned(),
        repository: a.get(user::REPOSITORY).filter(|s| !s.is_empty()).cloned(),
        mover_user: a.get(user::MOVER_USER).cloned(),
        volume: p.spec.as_ref().and_then(|s| s.volume_name.clone()),
        bound: p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"),
        capacity_bytes: p
            .status
            .as_ref()
            .and_then(|s| s.capacity.as_ref())
            .and_then(|c| c.get("storage"))
            .map(|q| quantity_bytes(&q.0))
            .unwrap_or_default(),
        deadline: a.get(user::MOVER_DEADLINE).cloned(),
    })
}

/// The name of the Job that serves the request seen at `resource_version`.
pub fn job_name(pvc: &str, uid: &str, resource_version: &str) -> String {
    naming::mover_job_name(
        Operation::Restore,
        pvc,
        uid,
        &format!("manual:{resource_version}"),
    )
}

/// Serves every request until none is in flight or `budget` has passed.
pub async fn run(ctx: &Ctx, budget: Duration, poll: Duration) -> Summary {
    let started = Instant::now();
    let mut summary = Summary::default();
    loop {
        summary.pending.clear();
        match round(ctx, &mut summary).await {
            Ok(()) => {}
            Err(e) => {
                tracing::error!("{e}");
                summary.errors.push(e);
                return summary;
            }
        }
        if summary.pending.is_empty() || started.elapsed() + poll >= budget {
            return summary;
        }
        tokio::time::sleep(poll).await;
    }
}

async fn round(ctx: &Ctx, summary: &mut Summary) -> Result<(), String> {
    let all = Api::<PersistentVolumeClaim>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| describe_kube_error(&e, "list persistentvolumeclaims in all namespaces"))?;
    for r in all.items.iter().filter_map(request) {
        if let Err(e) = serve(ctx, &r, summary).await {
            tracing::warn!(namespace = %r.namespace, pvc = %r.name, "{e}");
            summary.pending.insert(r.key(), e.clone());
            summary.errors.push(e);
        }
    }
    Ok(())
}

/// Writes the outcome and removes the request (only if the PVC did not change).
async fn finish(
    ctx: &Ctx,
    r: &Request,
    outcome: &str,
    event: (&str, bool),
    summary: &mut Summary,
) -> Result<(), String> {
    let patch = json!({"metadata": {
        "resourceVersion": r.resource_version,
        "annotations": {REQUEST: null, REPLACE: null, JOB: null, RESULT: outcome},
    }});
    match Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &r.namespace)
        .patch(&r.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {}
        Err(e) if is_status(&e, 409) => {
            summary
                .pending
                .insert(r.key(), "PVC changed; next round".into());
            return Ok(());
        }
        Err(e) => {
            return Err(describe_kube_error(
                &e,
                &format!("annotate persistentvolumeclaim {}", r.key()),
            ));
        }
    }
    let (reason, warning) = event;
    if warning {
        tracing::warn!(namespace = %r.namespace, pvc = %r.name, "{outcome}");
        ctx.events
            .warning(&r.reference(), reason, "ManualRestore", outcome.to_string())
            .await;
    } else {
        tracing::info!(namespace = %r.namespace, pvc = %r.name, "{outcome}");
        ctx.events
            .normal(&r.reference(), reason, "ManualRestore", outcome.to_string())
            .await;
    }
    summary.done.insert(r.key(), outcome.to_string());
    Ok(())
}

async fn serve(ctx: &Ctx, r: &Request, summary: &mut Summary) -> Result<(), String> {
    let Some(job_name) = &r.job else {
        return take(ctx, r, summary).await;
    };
    let jobs = Api::<Job>::namespaced(ctx.client.clone(), &r.namespace);
    let job = match jobs.get_opt(job_name).await {
        Ok(j) => j,
        Err(e) => {
            return Err(describe_kube_error(
                &e,
                &format!("get job {}/{job_name}", r.namespace),
            ));
        }
    };
    let Some(job) = job else {
        // Taken by a run killed before it created the Job: create it now (suspended;
        // the next round checks again before it starts).
        start(ctx, r, job_name).await?;
        summary.pending.insert(
            r.key(),
            format!("restore Job {job_name} created, starts once no pod uses the volume"),
        );
        return Ok(());
    };
    if job.spec.as_ref().and_then(|s| s.suspend) == Some(true) {
        return release(ctx, r, job_name, summary).await;
    }
    let done = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| {
            c.iter().find_map(|c| {
                (c.status == "True").then_some(match c.type_.as_str() {
                    "Complete" | "SuccessCriteriaMet" => Some(true),
                    "Failed" | "FailureTarget" => Some(false),
                    _ => None,
                })?
            })
        });
    let Some(succeeded) = done else {
        summary
            .pending
            .insert(r.key(), format!("restore Job {job_name} running"));
        return Ok(());
    };
    let result = job_result::fetch(&ctx.client, &job).await?;
    let (outcome, event) = outcome(r, job_name, succeeded, result.as_ref());
    finish(ctx, r, &outcome, event, summary).await
}

/// The outcome written on the PVC for a finished Job.
fn outcome(
    r: &Request,
    job: &str,
    succeeded: bool,
    result: Option<&RunResult>,
) -> (String, (&'static str, bool)) {
    let at = jiff::Timestamp::now();
    match (succeeded, result) {
        (true, Some(res)) if res.restored == Some(true) => (
            format!(
                "restored snapshot {} ({} files, {} bytes) at {at} by Job {}/{job}",
                res.snapshot.as_deref().unwrap_or(&r.snapshot),
                res.files,
                res.bytes,
                r.namespace
            ),
            (reason::SUCCEEDED, false),
        ),
        (true, _) => (
            format!(
                "failed: nothing restored at {at}: the repository holds no backup (or no \
                 snapshot {}); the volume was left as it was (Job {}/{job})",
                r.snapshot, r.namespace
            ),
            (reason::FAILED, true),
        ),
        (false, Some(res)) if res.reason.as_deref() == Some(result_reason::TARGET_NOT_EMPTY) => (
            format!(
                "refused at {at}: the volume is not empty and {REPLACE} is not \"true\"; nothing \
                 was written. To overwrite it (files not in the snapshot are deleted): kubectl -n \
                 {ns} annotate pvc {pvc} {REQUEST}={snap} {REPLACE}=true --overwrite, then create \
                 the Job again",
                ns = r.namespace,
                pvc = r.name,
                snap = r.snapshot
            ),
            (reason::REFUSED, true),
        ),
        (false, res) => (
            format!(
                "failed at {at}: {} (Job {}/{job}; its pod's log has the details). Once fixed, \
                 annotate the PVC {REQUEST} again and create the Job again",
                res.and_then(|x| x.error.clone())
                    .unwrap_or_else(|| "the restore Job failed".into()),
                r.namespace
            ),
            (reason::FAILED, true),
        ),
    }
}

/// A new request: checks, then records the Job's name (resourceVersion precondition)
/// and starts it.
async fn take(ctx: &Ctx, r: &Request, summary: &mut Summary) -> Result<(), String> {
    if let Err(why) = check(ctx, r).await? {
        let outcome = format!("refused at {}: {why}", jiff::Timestamp::now());
        return finish(ctx, r, &outcome, (reason::REFUSED, true), summary).await;
    }
    let name = job_name(&r.name, &r.uid, &r.resource_version);
    let patch = json!({"metadata": {
        "resourceVersion": r.resource_version,
        "annotations": {JOB: name, RESULT: null},
    }});
    match Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &r.namespace)
        .patch(&r.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {}
        // Another run took it (or the user changed the request): next round.
        Err(e) if is_status(&e, 409) => {
            summary
                .pending
                .insert(r.key(), "PVC changed; next round".into());
            return Ok(());
        }
        Err(e) => {
            return Err(describe_kube_error(
                &e,
                &format!("annotate persistentvolumeclaim {}", r.key()),
            ));
        }
    }
    start(ctx, r, &name).await?;
    summary.pending.insert(
        r.key(),
        format!("restore Job {name} created, starts once no pod uses the volume"),
    );
    Ok(())
}

/// Why the request cannot be served (`Ok(Err)`), or an API error.
async fn check(ctx: &Ctx, r: &Request) -> Result<Result<(), String>, String> {
    if !r.bound || r.volume.is_none() {
        return Ok(Err(format!(
            "PVC {} is not bound to a volume; a manual restore goes into an existing volume \
             (a new PVC is restored by the populator: spec.dataSourceRef)",
            r.key()
        )));
    }
    if let Some(why) = in_use(ctx, r, None).await? {
        return Ok(Err(why));
    }
    if let Some(why) = not_granted(ctx, r).await? {
        return Ok(Err(why));
    }
    if let Some(u) = &r.mover_user
        && parse_user(u).is_err()
    {
        return Ok(Err(format!(
            "{} {u:?} is not a user: expected UID or UID:GID",
            user::MOVER_USER
        )));
    }
    Ok(run_as(ctx, r).await?.map(|_| ()))
}

/// Pods (other than those of `own_job`) that use the PVC and are not finished.
fn users_of(pods: &[Pod], pvc: &str, own_job: Option<&str>) -> Vec<String> {
    pods.iter()
        .filter(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            p.metadata.deletion_timestamp.is_none()
                && !matches!(phase, Some("Succeeded") | Some("Failed"))
                && own_job.is_none_or(|j| p.labels().get("job-name").map(String::as_str) != Some(j))
                && p.spec.as_ref().is_some_and(|s| {
                    s.volumes.iter().flatten().any(|v| {
                        v.persistent_volume_claim
                            .as_ref()
                            .is_some_and(|c| c.claim_name == pvc)
                    })
                })
        })
        .map(|p| p.name_any())
        .collect()
}

/// The refusal for a PVC that pods use: what to do so that nothing starts them again.
fn in_use_refusal(key: &str, ns: &str, users: &[String]) -> String {
    format!(
        "PVC {key} is in use by pod(s) {}: a restore must not write under a running app. \
         Suspend the app's Flux Kustomization (flux suspend kustomization <app>) so that Flux \
         does not scale it up again, scale it down (kubectl -n {ns} scale deploy/... \
         --replicas=0), then annotate the PVC {REQUEST} again and create the Job again; \
         afterwards flux resume kustomization <app>",
        users.join(", ")
    )
}

/// `Some(refusal)` when a pod (other than `own_job`'s) uses the PVC.
async fn in_use(ctx: &Ctx, r: &Request, own_job: Option<&str>) -> Result<Option<String>, String> {
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &r.namespace)
        .list(&ListParams::default())
        .await
        .map_err(|e| describe_kube_error(&e, &format!("list pods in {}", r.namespace)))?;
    let users = users_of(&pods.items, &r.name, own_job);
    Ok((!users.is_empty()).then(|| in_use_refusal(&r.key(), &r.namespace, &users)))
}

/// `Some(refusal)` when the PVC's repository annotation names another namespace's
/// repository (the base's layout) and that namespace has not granted it.
async fn not_granted(ctx: &Ctx, r: &Request) -> Result<Option<String>, String> {
    let base = &ctx.cfg.prewarm.cluster.repository_base;
    let (Some(repo), Some(base)) = (&r.repository, base) else {
        return Ok(None);
    };
    if r.secret.is_some() {
        // The PVC's own Secret of its own namespace decides the repository.
        return Ok(None);
    }
    let Some(owner) =
        crate::plan::repository_namespace(base, repo, ctx.settings.default_endpoint.as_deref())
    else {
        return Ok(None);
    };
    if owner == r.namespace {
        return Ok(None);
    }
    let ns = Api::<Namespace>::all(ctx.client.clone())
        .get_opt(&owner)
        .await
        .map_err(|e| describe_kube_error(&e, &format!("get namespace {owner}")))?;
    let annotations = ns.and_then(|n| n.metadata.annotations);
    Ok(
        (!grant::allows(&owner, annotations.as_ref(), &r.namespace)).then(|| {
            format!(
                "PVC {} names repository {repo} (annotation {}) of namespace {owner}: {}",
                r.key(),
                user::REPOSITORY,
                grant::how_to_grant(&owner, &r.namespace)
            )
        }),
    )
}

/// A suspended restore Job: started only if still no pod uses the volume, else deleted
/// before it wrote anything and the request refused.
async fn release(
    ctx: &Ctx,
    r: &Request,
    job_name: &str,
    summary: &mut Summary,
) -> Result<(), String> {
    let jobs = Api::<Job>::namespaced(ctx.client.clone(), &r.namespace);
    if let Some(why) = in_use(ctx, r, Some(job_name)).await? {
        match jobs.delete(job_name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) => {}
            Err(e) => {
                return Err(describe_kube_error(
                    &e,
                    &format!("delete job {}/{job_name}", r.namespace),
                ));
            }
        }
        let outcome = format!(
            "refused at {}: nothing was written (restore Job {}/{job_name} deleted before it \
             started): {why}",
            jiff::Timestamp::now(),
            r.namespace
        );
        return finish(ctx, r, &outcome, (reason::REFUSED, true), summary).await;
    }
    let patch = json!({"spec": {"suspend": false}});
    jobs.patch(job_name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| describe_kube_error(&e, &format!("start job {}/{job_name}", r.namespace)))?;
    tracing::info!(namespace = %r.namespace, pvc = %r.name, job = %job_name,
        "no pod uses the volume: restore Job started");
    summary
        .pending
        .insert(r.key(), format!("restore Job {job_name} running"));
    Ok(())
}

/// Whom the mover runs as: the PVC's `stowage.io/mover-user`, else root with the restore
/// capabilities where the namespace opts in, else the distroless nonroot user (which
/// restores content and modes but owns the files itself).
async fn run_as(ctx: &Ctx, r: &Request) -> Result<Result<RunAs, String>, String> {
    let ns = Api::<Namespace>::all(ctx.client.clone())
        .get_opt(&r.namespace)
        .await
        .map_err(|e| describe_kube_error(&e, &format!("get namespace {}", r.namespace)))?;
    let privileged = ns
        .and_then(|n| n.metadata.labels)
        .and_then(|l| l.get(contract::LABEL_PRIVILEGED_MOVER).cloned())
        .is_some_and(|v| v == "true");
    Ok(
        match r.mover_user.as_deref().and_then(|u| parse_user(u).ok()) {
            Some((0, _)) | None if privileged => Ok(RunAs::Privileged),
            Some((uid, gid)) if uid != 0 => Ok(RunAs::User {
                uid,
                gid,
                groups: Vec::new(),
            }),
            Some(_) => Err(format!(
                "{} asks for root, which needs the namespace label {}=true",
                user::MOVER_USER,
                contract::LABEL_PRIVILEGED_MOVER
            )),
            None => Ok(RunAs::User {
                uid: mover_job::NONROOT_ID,
                gid: mover_job::NONROOT_ID,
                groups: Vec::new(),
            }),
        },
    )
}

/// Creates the restore Job (and its per-run Secret); both idempotent.
async fn start(ctx: &Ctx, r: &Request, name: &str) -> Result<(), String> {
    let ns = r.namespace.clone();
    // Credentials: the PVC's own Secret (used as it is, in its namespace), else a
    // per-run Secret from the central one.
    let creds = match &r.secret {
        Some(s) => {
            let got = Api::<Secret>::namespaced(ctx.client.clone(), &ns)
                .get_opt(s)
                .await
                .map_err(|e| describe_kube_error(&e, &format!("get secret {ns}/{s}")))?;
            if got.is_none() {
                return Err(format!(
                    "Secret {ns}/{s} named by annotation {} does not exist: create it or \
                     remove the annotation",
                    user::SECRET
                ));
            }
            None
        }
        None => {
            let central = pass::central(ctx).await?;
            let repository = match &r.repository {
                Some(x) => x.clone(),
                None => {
                    let base = &ctx.cfg.prewarm.cluster.repository_base;
                    let base = base.as_deref().ok_or_else(|| {
                        format!(
                            "no repository for PVC {}: set STOWAGE_REPOSITORY_BASE or annotate \
                             the PVC {}",
                            r.key(),
                            user::REPOSITORY
                        )
                    })?;
                    naming::repository_for(base, &r.namespace, &r.name)
                }
            };
            Some(RunCredentials {
                password: credentials::derive_repository_password(&central.master, &repository),
                repository,
                access_key_id: central.access_key_id,
                secret_access_key: central.secret_access_key,
                region: pass::region(&ctx.cfg),
                ca_bundle: credentials::load_ca_bundle(&ctx.cfg.common, &ctx.cfg.restic)?,
            })
        }
    };
    let pv = match &r.volume {
        Some(v) => Api::<PersistentVolume>::all(ctx.client.clone())
            .get_opt(v)
            .await
            .map_err(|e| describe_kube_error(&e, &format!("get persistentvolume {v}")))?,
        None => None,
    };
    let secret_name = r.secret.clone().unwrap_or_else(|| name.to_string());
    let mut spec = MoverJobSpec::new(
        Operation::Restore,
        name,
        &ns,
        &r.name,
        &r.uid,
        &ctx.cfg.prewarm.mover_image,
        &secret_name,
    );
    spec.run_as = run_as(ctx, r).await??;
    spec.placement = match pv
        .as_ref()
        .and_then(|p| p.spec.as_ref())
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.clone())
    {
        Some(sel) => Placement::Affinity(sel),
        None => Placement::Anywhere,
    };
    spec.args = vec!["--snapshot".into(), r.snapshot.clone()];
    if r.replace {
        spec.args.push("--replace".into());
    }
    // A refusal or a failure is reported, not retried behind the user's back.
    spec.backoff_limit = 0;
    spec.active_deadline_seconds =
        mover_job::deadline(r.capacity_bytes, None, r.deadline.as_deref())?;
    spec.ca_from_secret = creds.as_ref().is_some_and(|c| c.ca_bundle.is_some());
    spec.env = mover_job::mover_env(&ctx.cfg.restic, &ctx.cfg.common, None);
    spec.extra_labels
        .insert(contract::app::INSTANCE.into(), "manual-restore".into());
    spec.annotations.insert(REQUEST.into(), r.snapshot.clone());
    let mut job = mover_job::mover_job(&spec);
    // Started by the next round, which checks once more that no pod uses the volume.
    if let Some(s) = job.spec.as_mut() {
        s.suspend = Some(true);
    }
    let jobs = Api::<Job>::namespaced(ctx.client.clone(), &ns);
    let (job, fresh) = match jobs.create(&PostParams::default(), &job).await {
        Ok(j) => (j, true),
        Err(e) if is_status(&e, 409) => (
            jobs.get(name)
                .await
                .map_err(|e| describe_kube_error(&e, &format!("get job {ns}/{name}")))?,
            false,
        ),
        Err(e) => return Err(describe_kube_error(&e, &format!("create job {ns}/{name}"))),
    };
    if let Some(creds) = creds {
        credentials::create_run_secret(&ctx.client, &job, Operation::Restore, &r.uid, &creds)
            .await?;
    }
    if fresh {
        let msg = format!(
            "manual restore of snapshot {} into this PVC{} prepared: Job {ns}/{name} starts \
             once no pod uses the volume",
            r.snapshot,
            if r.replace {
                " (replacing its content)"
            } else {
                ""
            }
        );
        tracing::info!(namespace = %ns, pvc = %r.name, job = %name, "{msg}");
        ctx.events
            .normal(&r.reference(), reason::STARTED, "ManualRestore", msg)
            .await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> Request {
        Request {
            namespace: "db".into(),
            name: "pg".into(),
            uid: "u".into(),
            resource_version: "3".into(),
            snapshot: "latest".into(),
            replace: false,
            job: None,
            secret: None,
            repository: None,
            mover_user: None,
            volume: Some("pv".into()),
            bound: true,
            capacity_bytes: 0,
            deadline: None,
        }
    }

    #[test]
    fn outcomes_name_what_happened() {
        let ok = RunResult {
            ok: true,
            restored: Some(true),
            snapshot: Some("abcd".into()),
            ..Default::default()
        };
        let (m, (r, w)) = outcome(&req(), "j", true, Some(&ok));
        assert!(m.starts_with("restored snapshot abcd"), "{m}");
        assert_eq!((r, w), (reason::SUCCEEDED, false));
        let refused = RunResult {
            ok: false,
            reason: Some(result_reason::TARGET_NOT_EMPTY.into()),
            ..Default::default()
        };
        let (m, (r, _)) = outcome(&req(), "j", false, Some(&refused));
        assert!(m.starts_with("refused") && m.contains(REPLACE), "{m}");
        assert_eq!(r, reason::REFUSED);
        let none = RunResult {
            ok: true,
            restored: Some(false),
            ..Default::default()
        };
        assert!(
            outcome(&req(), "j", true, Some(&none))
                .0
                .starts_with("failed")
        );
        assert!(outcome(&req(), "j", false, None).0.starts_with("failed"));
    }

    #[test]
    fn job_names_differ_per_request() {
        assert_ne!(job_name("pg", "u", "3"), job_name("pg", "u", "4"));
        assert_eq!(job_name("pg", "u", "3"), job_name("pg", "u", "3"));
        assert_eq!(parse_user("1000"), Ok((1000, 1000)));
        assert_eq!(parse_user("33:44"), Ok((33, 44)));
        assert!(parse_user("www").is_err());
    }

    #[test]
    fn pods_that_use_the_volume_block_the_restore() {
        let pod = |name: &str, claim: &str, phase: &str, job: Option<&str>| -> Pod {
            let mut labels = serde_json::Map::new();
            if let Some(j) = job {
                labels.insert("job-name".into(), json!(j));
            }
            serde_json::from_value(json!({
                "metadata": {"name": name, "labels": labels},
                "spec": {"containers": [{"name": "c"}],
                         "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": claim}}]},
                "status": {"phase": phase},
            }))
            .unwrap()
        };
        let pods = [
            pod("app-1", "pg", "Running", None),
            pod("app-2", "pg", "Pending", None),
            pod("done", "pg", "Succeeded", None),
            pod("other", "cache", "Running", None),
            pod("mover", "pg", "Running", Some("stowage-restore-pg-x")),
        ];
        assert_eq!(
            users_of(&pods, "pg", Some("stowage-restore-pg-x")),
            vec!["app-1", "app-2"]
        );
        assert_eq!(users_of(&pods[2..4], "pg", None), Vec::<String>::new());
        let m = in_use_refusal("db/pg", "db", &users_of(&pods, "pg", None));
        assert!(m.contains("flux suspend kustomization"), "{m}");
        assert!(m.contains("app-1, app-2"), "{m}");
    }
}
