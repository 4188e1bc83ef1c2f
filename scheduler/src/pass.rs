//! One scheduler pass against the API: gather facts, record the results of finished
//! mover Jobs, plan, start Jobs, publish Events and metrics. Safe to run twice at once
//! or again at any time: Job names are deterministic, so a second start of the same
//! work meets AlreadyExists.

use std::collections::BTreeMap;

use anyhow::Result;
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, ObjectReference, PersistentVolume, PersistentVolumeClaim, Pod, Secret,
};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use stowage_common::env::{SchedulerConfig, list};
use stowage_common::k8s::contract::{self, reason, secret_keys, status, user};
use stowage_common::k8s::credentials::{self, CentralError, CentralSecret, RunCredentials};
use stowage_common::k8s::events::Events;
use stowage_common::k8s::job_result;
use stowage_common::k8s::mover_job::{self, BackupEnv, MoverJobSpec};
use stowage_common::k8s::naming::Operation;
use stowage_common::k8s::policy::Policies;
use stowage_common::k8s::{describe_kube_error, is_status};
use stowage_common::metrics::{Registry, names};
use stowage_common::result::RunResult;

use stowage_common::k8s::contract::consistency as cons;
use stowage_common::k8s::copy::{CopyMethod, CopySpec};
use stowage_common::k8s::hooks::Phase;

use crate::consistency::{self, HookState};
use crate::facts;
use crate::plan::{self, ActiveJob, Decision, PassSettings, Planned, SkipReason, Start};

/// The program's name as reporter of Events and metrics job.
pub const PROGRAM: &str = "stowage-scheduler";

/// What a pass did.
#[derive(Debug, Default)]
pub struct PassReport {
    pub started: Vec<(String, String, String)>,
    pub skipped: BTreeMap<String, usize>,
    pub recorded: Vec<(String, String, bool)>,
    /// What stopped the pass for everyone (policies unreadable, the central Secret
    /// missing while PVCs need it): the run fails.
    pub errors: Vec<String>,
    /// One PVC's problems: an Event on it and a `stowage_backup_problem` series; the
    /// run does not fail for them.
    pub problems: Vec<Problem>,
    pub metrics: Registry,
}

/// A problem of one PVC in this pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub namespace: String,
    pub pvc: String,
    /// Metric label (`credentials_missing`, `unknown_policy`, `api_error`, ...).
    pub reason: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}: {}", self.namespace, self.pvc, self.message)
    }
}

impl PassReport {
    fn problem(&mut self, pvc: &PersistentVolumeClaim, reason: &str, message: String) {
        self.problems.push(Problem {
            namespace: pvc.namespace().unwrap_or_default(),
            pvc: pvc.name_any(),
            reason: reason.to_string(),
            message,
        });
    }
}

pub struct PassOptions {
    pub dry_run: bool,
    pub now: Timestamp,
}

struct Ctx<'a> {
    client: Client,
    cfg: &'a SchedulerConfig,
    events: Events,
    dry_run: bool,
    now: Timestamp,
    central: Option<Result<Central, String>>,
}

/// Runs one pass. Errors that stop the whole pass (listing PVCs forbidden, API down)
/// are returned; what keeps every PVC from being backed up is in the report's
/// `errors`, one PVC's problems in its `problems`.
pub async fn run(client: Client, cfg: &SchedulerConfig, opts: PassOptions) -> Result<PassReport> {
    let started = std::time::Instant::now();
    let instance = std::env::var("POD_NAME").ok();
    let mut ctx = Ctx {
        events: Events::new(client.clone(), PROGRAM, instance),
        client,
        cfg,
        dry_run: opts.dry_run,
        now: opts.now,
        central: None,
    };
    let s = &cfg.scheduler;
    let mut report = PassReport::default();

    let policies = match load_policies(&ctx).await {
        Ok(p) => Some(p),
        Err(e) => {
            report.errors.push(e);
            None
        }
    };
    let lp = ListParams::default();
    let namespaces = Api::<Namespace>::all(ctx.client.clone())
        .list(&lp)
        .await
        .map_err(|e| anyhow::anyhow!(describe_kube_error(&e, "list namespaces")))?;
    let ns_facts: BTreeMap<String, plan::NamespaceFacts> = namespaces
        .items
        .iter()
        .map(|n| (n.name_any(), facts::namespace_facts(n)))
        .collect();
    let mut pvcs = Api::<PersistentVolumeClaim>::all(ctx.client.clone())
        .list(&lp)
        .await
        .map_err(|e| {
            anyhow::anyhow!(describe_kube_error(
                &e,
                "list persistentvolumeclaims in all namespaces"
            ))
        })?;
    let pvs = Api::<PersistentVolume>::all(ctx.client.clone())
        .list(&lp)
        .await
        .map_err(|e| anyhow::anyhow!(describe_kube_error(&e, "list persistentvolumes")))?;
    let pods = Api::<Pod>::all(ctx.client.clone())
        .list(&lp)
        .await
        .map_err(|e| anyhow::anyhow!(describe_kube_error(&e, "list pods in all namespaces")))?;
    let jobs = Api::<Job>::all(ctx.client.clone())
        .list(&ListParams::default().labels(&mover_job::mover_selector()))
        .await
        .map_err(|e| anyhow::anyhow!(describe_kube_error(&e, "list jobs in all namespaces")))?;

    // A pass that died between creating a Job and recording it on the PVC left a Job the
    // PVC does not know: adopt it, so its result is recorded and the PVC is not due again.
    for pvc in pvcs.items.iter_mut() {
        if let Some((name, created)) = unrecorded_job(pvc, &jobs.items) {
            match patch_pvc(
                &ctx,
                pvc,
                json!({ status::LAST_JOB: name, status::LAST_ATTEMPT: created.to_string() }),
            )
            .await
            {
                Ok(()) => {
                    let a = pvc
                        .metadata
                        .annotations
                        .get_or_insert_with(Default::default);
                    a.insert(status::LAST_JOB.into(), name);
                    a.insert(status::LAST_ATTEMPT.into(), created.to_string());
                }
                Err(e) => report.problem(pvc, "api_error", e),
            }
        }
    }

    // Post hooks owed by passes that died, and temporary copies nobody reads any more.
    let mut holding: Vec<ActiveJob> = Vec::new();
    if !ctx.dry_run {
        for pvc in pvcs.items.iter_mut() {
            match settle_hooks(&ctx, pvc, &jobs.items, &mut report).await {
                Ok(Some(job)) => holding.push(ActiveJob {
                    namespace: pvc.namespace().unwrap_or_default(),
                    name: job,
                    pvc_uid: pvc.metadata.uid.clone().unwrap_or_default(),
                }),
                Ok(None) => {}
                Err(e) => report.problem(pvc, "api_error", e),
            }
        }
        sweep_copies(&ctx, &pvcs.items, &jobs.items, &mut report).await;
    }

    let pv_by_name: BTreeMap<String, &PersistentVolume> =
        pvs.items.iter().map(|p| (p.name_any(), p)).collect();
    let pods_by_ns = facts::pods_by_namespace(pods.items);
    let no_pods = Vec::new();
    let mut facts: Vec<plan::PvcFacts> = pvcs
        .items
        .iter()
        .map(|pvc| {
            let pv = pvc
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.as_ref())
                .and_then(|n| pv_by_name.get(n).copied());
            let ns = pvc.namespace().unwrap_or_default();
            facts::pvc_facts(pvc, pv, pods_by_ns.get(&ns).unwrap_or(&no_pods))
        })
        .collect();
    let settings = PassSettings {
        backup_label: s.cluster.backup_label.clone(),
        max_concurrent_jobs: s.max_concurrent_jobs,
        include_namespaces: list(s.include_namespaces.as_deref()),
        exclude_namespaces: list(s.exclude_namespaces.as_deref()),
        default_snapshot_class: s.volume_snapshot_class.clone(),
        repository_base: s.cluster.repository_base.clone(),
    };

    // Results of finished Jobs first: they free their PVC and may fail the guard.
    let jobs_by_key: BTreeMap<(String, String), &Job> = jobs
        .items
        .iter()
        .map(|j| ((j.namespace().unwrap_or_default(), j.name_any()), j))
        .collect();
    let by_uid: BTreeMap<&str, &PersistentVolumeClaim> = pvcs
        .items
        .iter()
        .map(|p| (p.metadata.uid.as_deref().unwrap_or(""), p))
        .collect();
    let breakers_before = plan::breakers(&settings, &ns_facts, &facts);
    for f in facts.iter_mut() {
        let Some(pvc) = by_uid.get(f.uid.as_str()) else {
            continue;
        };
        match harvest(&ctx, pvc, &jobs_by_key, &mut report).await {
            // What was recorded decides this pass too (breaker, metrics).
            Ok(recorded) => {
                for (k, v) in recorded {
                    match v {
                        Some(v) => f.annotations.insert(k, v),
                        None => f.annotations.remove(&k),
                    };
                }
            }
            Err(e) => report.problem(pvc, "api_error", e),
        }
    }
    let breakers = plan::breakers(&settings, &ns_facts, &facts);
    storage_events(&ctx, &breakers_before, &breakers, &mut report).await;

    let mut active = facts::active_jobs(&jobs.items);
    // A pass holding hooks (between pre and post) owns its PVC like a running Job.
    active.extend(holding);
    // Without the policies nothing is decided (and no PVC is told its policy is
    // unknown): results are recorded, the run fails.
    let planned = match &policies {
        Some(policies) => plan::plan(ctx.now, &settings, policies, &ns_facts, &facts, &active),
        None => Vec::new(),
    };
    report.metrics.gauge(
        names::SCHEDULER_PVCS,
        "PVCs that opted in to backups",
        &[],
        planned.len() as f64,
    );
    let facts_by_uid: BTreeMap<&str, &plan::PvcFacts> =
        facts.iter().map(|f| (f.uid.as_str(), f)).collect();
    let mut due = 0;
    for p in &planned {
        let f = facts_by_uid[p.uid.as_str()];
        let pvc = by_uid[p.uid.as_str()];
        match &p.decision {
            Decision::Start(start) => {
                due += 1;
                report.metrics.add(
                    names::SCHEDULER_MISSED,
                    "Scheduled backups that passed without a run (an outage yields one backup)",
                    &[],
                    start.missed as f64,
                );
                match start_backup(&mut ctx, pvc, f, start).await {
                    Ok(true) => report.started.push((
                        p.namespace.clone(),
                        p.pvc.clone(),
                        start.job_name.clone(),
                    )),
                    Ok(false) => {}
                    Err((why, e)) => {
                        count_skip(&mut report, &why);
                        // A backup that hooks or the point-in-time copy stopped is a
                        // failed backup for alerting, like a failed mover.
                        if why == cons::RESULT_PRE_HOOK_FAILED || why == cons::RESULT_COPY_FAILED {
                            report.metrics.add(
                                names::BACKUP_RESULTS,
                                "Backup results recorded in this pass",
                                &[("result", "failed")],
                                1.0,
                            );
                        }
                        if why == "api_error" && !ctx.dry_run {
                            ctx.events
                                .warning(
                                    &pvc_ref(pvc),
                                    reason::BACKUP_NOT_STARTED,
                                    "Backup",
                                    format!("{e}. The next pass retries."),
                                )
                                .await;
                        }
                        report.problem(pvc, &why, e);
                    }
                }
            }
            Decision::Skip { reason, message } => {
                if *reason == SkipReason::ConcurrencyLimit {
                    due += 1;
                }
                count_skip(&mut report, reason.as_str());
                // A PVC or namespace being deleted gets no Event (none can be created in a
                // terminating namespace): the log says why its backup did not start.
                if matches!(
                    reason,
                    SkipReason::Terminating | SkipReason::NamespaceTerminating
                ) {
                    tracing::info!(namespace = %p.namespace, pvc = %p.pvc, reason = reason.as_str(), "not backed up: {message}");
                } else {
                    tracing::debug!(namespace = %p.namespace, pvc = %p.pvc, reason = reason.as_str(), "{message}");
                }
                if let Some(r) = reason.event_reason() {
                    note_skip(&ctx, pvc, p, r, message).await;
                    report.problem(pvc, reason.as_str(), message.clone());
                }
            }
        }
    }
    // The central Secret is everyone's: its absence fails the run once (each PVC that
    // needed it has its Event and problem too).
    if let Some(Err(e)) = &ctx.central {
        report.errors.push(e.clone());
    }
    backup_series(
        &ctx,
        &policies,
        &planned,
        &facts_by_uid,
        &by_uid,
        &mut report,
    )
    .await;
    report.metrics.gauge(
        names::SCHEDULER_DUE,
        "PVCs due for a backup in this pass",
        &[],
        due as f64,
    );
    report.metrics.gauge(
        names::SCHEDULER_STARTED,
        "Mover Jobs started in this pass",
        &[],
        report.started.len() as f64,
    );
    report.metrics.gauge(
        names::SCHEDULER_ERRORS,
        "Errors in this pass that keep every PVC from being backed up (the run fails)",
        &[],
        report.errors.len() as f64,
    );
    report.metrics.gauge(
        names::PASS_DURATION,
        "Duration of the last pass",
        &[("program", PROGRAM)],
        started.elapsed().as_secs_f64(),
    );
    report.metrics.gauge(
        names::PASS_LAST_RUN,
        "End time of the last pass",
        &[("program", PROGRAM)],
        ctx.now.as_second() as f64,
    );
    Ok(report)
}

/// The newest backup Job of this PVC (by UID label) that is newer than what the PVC
/// records, if any: (name, creation time).
fn unrecorded_job(pvc: &PersistentVolumeClaim, jobs: &[Job]) -> Option<(String, Timestamp)> {
    let uid = pvc.metadata.uid.as_deref()?;
    let a = pvc.annotations();
    let last_job = a.get(status::LAST_JOB);
    let created = |j: &Job| j.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let mine: Vec<&Job> = jobs
        .iter()
        .filter(|j| {
            let l = j.labels();
            l.get(contract::label::PVC_UID).map(String::as_str) == Some(uid)
                && l.get(contract::label::OPERATION).map(String::as_str)
                    == Some(Operation::Backup.as_str())
        })
        .collect();
    let newest = mine
        .iter()
        .filter(|j| Some(&j.name_any()) != last_job)
        .filter_map(|j| Some((j.name_any(), created(j)?)))
        .max_by_key(|(_, t)| *t)?;
    // Compare creation times on the API server's clock only, strictly: a Job created in
    // the same second as the recorded one is not "newer" (timestamps have 1 s steps).
    let recorded_created = last_job
        .and_then(|n| mine.iter().find(|j| &j.name_any() == n))
        .and_then(|j| created(j));
    let newer = match (last_job, recorded_created) {
        (None, _) => true,
        (Some(_), Some(t0)) => newest.1 > t0,
        // The recorded Job is gone (TTL): newer than the recorded attempt.
        (Some(_), None) => a
            .get(status::LAST_ATTEMPT)
            .and_then(|v| v.parse::<Timestamp>().ok())
            .is_none_or(|t| newest.1 > t),
    };
    newer.then_some(newest)
}

fn count_skip(report: &mut PassReport, reason: &str) {
    *report.skipped.entry(reason.to_string()).or_default() += 1;
    report.metrics.add(
        names::SCHEDULER_SKIPPED,
        "PVCs not backed up in this pass, by reason",
        &[("reason", reason)],
        1.0,
    );
}

/// The policies ConfigMap. Err: it cannot be read at all (then nothing is decided);
/// a broken policy is only its PVCs' problem.
async fn load_policies(ctx: &Ctx<'_>) -> Result<Policies, String> {
    let s = &ctx.cfg.scheduler;
    let api = Api::<ConfigMap>::namespaced(ctx.client.clone(), &s.cluster.system_namespace);
    let doc = match api.get_opt(&s.cluster.policies_configmap).await {
        Ok(Some(cm)) => cm
            .data
            .and_then(|d| d.get(contract::POLICIES_KEY).cloned())
            .unwrap_or_default(),
        Ok(None) => {
            return Err(format!(
                "policies ConfigMap {}/{} not found: no PVC can be backed up (deploy \
                 kustomize/ or set STOWAGE_POLICIES_CONFIGMAP)",
                s.cluster.system_namespace, s.cluster.policies_configmap
            ));
        }
        Err(e) => {
            return Err(describe_kube_error(
                &e,
                &format!(
                    "get configmap {}/{}",
                    s.cluster.system_namespace, s.cluster.policies_configmap
                ),
            ));
        }
    };
    let p = Policies::parse(&doc).map_err(|e| {
        format!(
            "ConfigMap {}/{} key {}: {e}",
            s.cluster.system_namespace,
            s.cluster.policies_configmap,
            contract::POLICIES_KEY
        )
    })?;
    for (name, e) in &p.invalid {
        tracing::warn!(policy = %name, "invalid backup policy: {e}");
    }
    Ok(p)
}

/// The object storage Events are about: the scheduler's CronJob.
fn scheduler_ref(ctx: &Ctx<'_>) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("CronJob".into()),
        name: Some(PROGRAM.into()),
        namespace: Some(ctx.cfg.scheduler.cluster.system_namespace.clone()),
        ..Default::default()
    }
}

/// One Event when a storage's breaker opens or closes in this pass (not one per PVC),
/// and its series.
async fn storage_events(
    ctx: &Ctx<'_>,
    before: &BTreeMap<String, plan::Breaker>,
    after: &BTreeMap<String, plan::Breaker>,
    report: &mut PassReport,
) {
    for (storage, b) in after {
        let was_open = before.get(storage).is_some_and(|b| b.is_open());
        report.metrics.gauge(
            names::STORAGE_UNREACHABLE,
            "1 while backups of a storage keep failing to reach it (one probe per pass)",
            &[("storage", storage)],
            if b.is_open() { 1.0 } else { 0.0 },
        );
        report.metrics.gauge(
            names::STORAGE_FAILURES,
            "Newest backup results of a storage that failed to reach it, in a row",
            &[("storage", storage)],
            b.failures() as f64,
        );
        if ctx.dry_run {
            continue;
        }
        if b.is_open() && !was_open {
            tracing::warn!(%storage, failures = b.failures(), "storage unreachable: one probe backup per pass until it answers");
            ctx.events
                .warning(
                    &scheduler_ref(ctx),
                    reason::STORAGE_UNREACHABLE,
                    "Backup",
                    format!(
                        "the last {} backups of storage {storage} could not reach it: until one \
                         does, one probe backup starts per pass and the other PVCs of this \
                         storage wait (their backups start by themselves once it answers)",
                        b.failures()
                    ),
                )
                .await;
        } else if was_open && !b.is_open() {
            tracing::info!(%storage, "storage reachable again: backups resume");
            ctx.events
                .normal(
                    &scheduler_ref(ctx),
                    reason::STORAGE_REACHABLE,
                    "Backup",
                    format!("a backup reached storage {storage} again: backups resume"),
                )
                .await;
        }
    }
}

/// Series of every opted-in PVC (labelled with its policy), from the first pass: when
/// it opted in, its last success, the expected interval of its policy; and one series
/// per problem.
async fn backup_series(
    ctx: &Ctx<'_>,
    policies: &Option<Policies>,
    planned: &[Planned],
    facts_by_uid: &BTreeMap<&str, &plan::PvcFacts>,
    by_uid: &BTreeMap<&str, &PersistentVolumeClaim>,
    report: &mut PassReport,
) {
    let mut intervals: BTreeMap<&str, Option<i64>> = BTreeMap::new();
    for p in planned {
        let f = facts_by_uid[p.uid.as_str()];
        let labels = [
            ("namespace", p.namespace.as_str()),
            ("persistentvolumeclaim", p.pvc.as_str()),
            ("policy", p.policy.as_str()),
        ];
        let opted_in = match f
            .annotations
            .get(status::OPTED_IN_AT)
            .and_then(|v| v.parse::<Timestamp>().ok())
        {
            Some(t) => t,
            None => {
                if !ctx.dry_run
                    && let Err(e) = patch_pvc(
                        ctx,
                        by_uid[p.uid.as_str()],
                        json!({ status::OPTED_IN_AT: ctx.now.to_string() }),
                    )
                    .await
                {
                    tracing::warn!("{e}");
                }
                ctx.now
            }
        };
        report.metrics.gauge(
            names::BACKUP_OPTED_IN,
            "Time the scheduler first saw a PVC opted in to backups",
            &labels,
            opted_in.as_second() as f64,
        );
        if let Some(t) = f
            .annotations
            .get(status::LAST_BACKUP)
            .and_then(|v| v.parse::<Timestamp>().ok())
        {
            report.metrics.gauge(
                names::BACKUP_LAST_SUCCESS,
                "Time of the last successful backup of a PVC",
                &labels,
                t.as_second() as f64,
            );
        }
        let interval = *intervals.entry(p.policy.as_str()).or_insert_with(|| {
            policies
                .as_ref()
                .and_then(|ps| ps.get(&p.policy).ok())
                .and_then(|policy| plan::expected_interval(&policy.schedule))
        });
        if let Some(i) = interval {
            report.metrics.gauge(
                names::BACKUP_EXPECTED_INTERVAL,
                "Longest time between two scheduled backups of a PVC's policy",
                &labels,
                i as f64,
            );
        }
    }
    for pr in &report.problems {
        report.metrics.gauge(
            names::BACKUP_PROBLEM,
            "1 for a PVC that has a problem in this pass, by reason (Events on the PVC)",
            &[
                ("namespace", pr.namespace.as_str()),
                ("persistentvolumeclaim", pr.pvc.as_str()),
                ("reason", pr.reason.as_str()),
            ],
            1.0,
        );
    }
}

fn pvc_ref(pvc: &PersistentVolumeClaim) -> ObjectReference {
    pvc.object_ref(&())
}

async fn patch_pvc(
    ctx: &Ctx<'_>,
    pvc: &PersistentVolumeClaim,
    annotations: serde_json::Value,
) -> Result<(), String> {
    let ns = pvc.namespace().unwrap_or_default();
    let name = pvc.name_any();
    Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &ns)
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": annotations}})),
        )
        .await
        .map(|_| ())
        .map_err(|e| describe_kube_error(&e, &format!("patch persistentvolumeclaim {ns}/{name}")))
}

/// Records a warning-worthy skip once per change of reason (not on every pass).
async fn note_skip(
    ctx: &Ctx<'_>,
    pvc: &PersistentVolumeClaim,
    p: &Planned,
    reason: &str,
    message: &str,
) {
    let current = pvc.annotations().get(status::SKIPPED).cloned();
    let value = format!("{reason}: {message}");
    tracing::warn!(namespace = %p.namespace, pvc = %p.pvc, reason, "{message}");
    if current.as_deref() == Some(value.as_str()) || ctx.dry_run {
        return;
    }
    ctx.events
        .warning(&pvc_ref(pvc), reason, "Backup", message.to_string())
        .await;
    if let Err(e) = patch_pvc(ctx, pvc, json!({ status::SKIPPED: value })).await {
        tracing::warn!("{e}");
    }
}

/// Annotations a pass recorded on a PVC (None: removed).
type Recorded = Vec<(String, Option<String>)>;

fn recorded_of(ann: &serde_json::Value) -> Recorded {
    ann.as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().map(str::to_string)))
        .collect()
}

/// Reads the result of the PVC's last backup Job, once it finished, into the PVC's
/// annotations and an Event. Returns the annotations recorded.
///
/// A partial backup (reason `Partial`: a snapshot was stored but entries the mover
/// could not read are missing) is a failure of its own kind: `Failed: Partial`, a
/// `BackupPartial` Event naming the count and the first paths, the snapshot recorded
/// in `stowage.io/last-partial-snapshot`, and `stowage.io/last-backup` (the last
/// success) left where it was, so the backup-missing alert fires if only partial
/// backups happen.
async fn harvest(
    ctx: &Ctx<'_>,
    pvc: &PersistentVolumeClaim,
    jobs: &BTreeMap<(String, String), &Job>,
    report: &mut PassReport,
) -> Result<Recorded, String> {
    let a = pvc.annotations();
    let Some(job_name) = a.get(status::LAST_JOB) else {
        return Ok(Vec::new());
    };
    if a.get(status::RECORDED_JOB) == Some(job_name) {
        return Ok(Vec::new());
    }
    let ns = pvc.namespace().unwrap_or_default();
    let (ok, result) = match jobs.get(&(ns.clone(), job_name.clone())) {
        Some(job) => match facts::job_finished(job) {
            None => return Ok(Vec::new()),
            Some(ok) => (ok, job_result::fetch(&ctx.client, job).await?),
        },
        None => (
            false,
            Some(RunResult {
                ok: false,
                error: Some(format!(
                    "mover Job {job_name} disappeared before its result was read (deleted by \
                     hand?)"
                )),
                ..Default::default()
            }),
        ),
    };
    let mut result = result.unwrap_or_default();
    let mut ok = ok && result.ok;
    let pvc_name = pvc.name_any();
    // Direct backups owe their post hooks until the result is in (also a failed,
    // timed-out or vanished Job).
    let mut hooks_note = None;
    if !ctx.dry_run
        && let Some(state) = a.get(cons::HOOK_STATE).and_then(|v| HookState::parse(v))
        && &state.job == job_name
    {
        let post = consistency::run_phase(&ctx.client, &ns, Phase::Post, &state.post).await;
        let pre_note = a
            .get(cons::LAST_HOOKS)
            .cloned()
            .unwrap_or_else(|| "pre=None".into());
        let note = format!("{pre_note} post={}", post.word());
        patch_pvc(
            ctx,
            pvc,
            json!({ cons::HOOK_STATE: null, cons::LAST_HOOKS: note }),
        )
        .await?;
        if !post.failures.is_empty() {
            ctx.events
                .warning(
                    &pvc_ref(pvc),
                    cons::reason::POST_HOOK_FAILED,
                    "Backup",
                    post.failures.join("; "),
                )
                .await;
        }
        if post.fail && ok {
            ok = false;
            result.reason = Some(cons::RESULT_POST_HOOK_FAILED.into());
            result.error = Some(post.failures.join("; "));
        }
        hooks_note = Some(post);
    }
    // Only when the post hook is the whole failure (a partial backup's snapshot is no
    // success, whatever its hooks did).
    let post_hook_failed_only = hooks_note.as_ref().is_some_and(|p| p.fail)
        && result.reason.as_deref() == Some(cons::RESULT_POST_HOOK_FAILED)
        && result.snapshot.is_some();
    let copied = a
        .get(cons::LAST_COPY_METHOD)
        .is_some_and(|m| m != CopyMethod::Direct.as_str());
    if !ctx.dry_run
        && copied
        && let Err(e) = consistency::remove_copies(&ctx.client, &ns, job_name).await
    {
        tracing::warn!("{e}");
    }
    let partial = !ok && result.reason.as_deref() == Some(stowage_common::result::reason::PARTIAL);
    report.recorded.push((ns.clone(), pvc_name.clone(), ok));
    report.metrics.add(
        names::BACKUP_RESULTS,
        "Backup results recorded in this pass",
        &[(
            "result",
            match (ok, partial) {
                (true, _) => "succeeded",
                (false, true) => "partial",
                (false, false) => "failed",
            },
        )],
        1.0,
    );
    if ctx.dry_run {
        return Ok(Vec::new());
    }
    let on = pvc_ref(pvc);
    let at = ctx.now.to_string();
    if ok {
        let snapshot = result.snapshot.clone().unwrap_or_default();
        let ann = json!({
            status::RECORDED_JOB: job_name,
            status::LAST_RESULT: "Succeeded",
            status::LAST_RESULT_AT: at,
            status::LAST_BACKUP: at,
            status::LAST_SNAPSHOT: snapshot,
        });
        patch_pvc(ctx, pvc, ann.clone()).await?;
        ctx.events
            .normal(
                &on,
                reason::BACKUP_SUCCEEDED,
                "Backup",
                format!(
                    "snapshot {} of {} files, {} bytes ({} new) by Job {job_name} in {:.0}s",
                    &snapshot.get(..8).unwrap_or(&snapshot),
                    result.files,
                    result.bytes,
                    result.added_bytes,
                    result.duration_secs
                ),
            )
            .await;
        tracing::info!(namespace = %ns, pvc = %pvc_name, snapshot = %snapshot, job = %job_name, "backup succeeded");
        Ok(recorded_of(&ann))
    } else {
        let why = result
            .error
            .clone()
            .unwrap_or_else(|| "the mover failed without a result (see the Job's pod logs)".into());
        let kind = result.reason.clone().unwrap_or_else(|| "Failed".into());
        let mut ann = json!({
            status::RECORDED_JOB: job_name,
            status::LAST_RESULT: format!("Failed: {kind}"),
            status::LAST_RESULT_AT: at,
        });
        // The data is in the repository; only the post hook (on-error: Fail) failed.
        if post_hook_failed_only {
            ann[status::LAST_BACKUP] = json!(at);
            ann[status::LAST_SNAPSHOT] = json!(result.snapshot.clone().unwrap_or_default());
        }
        if partial && let Some(snap) = &result.snapshot {
            ann[status::LAST_PARTIAL_SNAPSHOT] = json!(snap);
        }
        patch_pvc(ctx, pvc, ann.clone()).await?;
        let (event_reason, note) = if partial {
            (reason::BACKUP_PARTIAL, partial_note(job_name, &result))
        } else if kind == stowage_common::result::reason::FOREIGN_HISTORY {
            (
                reason::FOREIGN_HISTORY,
                format!("Job {job_name}: {why}. The next scheduled time retries."),
            )
        } else {
            (
                reason::BACKUP_FAILED,
                format!("Job {job_name}: {why}. The next scheduled time retries."),
            )
        };
        ctx.events.warning(&on, event_reason, "Backup", note).await;
        tracing::warn!(namespace = %ns, pvc = %pvc_name, job = %job_name, reason = %kind, skipped = result.skipped, "backup failed: {why}");
        Ok(recorded_of(&ann))
    }
}

/// The Event of a partial backup: what was stored, how much is missing, the first
/// paths, what to do.
fn partial_note(job_name: &str, result: &RunResult) -> String {
    let snapshot = result.snapshot.as_deref().unwrap_or("");
    let named = result.skipped_paths.len() as u64;
    let more = result.skipped.saturating_sub(named);
    format!(
        "Job {job_name} stored snapshot {} but {} entries could not be read and are missing \
         from it: {}{}. Give the mover a user that can read them (annotation {}) or exclude \
         them (annotation {}); the last complete backup stays the last success.",
        snapshot.get(..8).unwrap_or(snapshot),
        result.skipped.max(named),
        if result.skipped_paths.is_empty() {
            "(no paths reported)".to_string()
        } else {
            result.skipped_paths.join(", ")
        },
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        },
        user::MOVER_USER,
        user::EXCLUDES
    )
}

/// Credentials for a PVC's mover: its own Secret (annotation), or a per-run Secret
/// from the central one for the repository the plan allowed. Err: message.
async fn run_credentials(
    ctx: &mut Ctx<'_>,
    f: &plan::PvcFacts,
    start: &Start,
) -> Result<Option<RunCredentials>, String> {
    let s = &ctx.cfg.scheduler;
    let Some(repository) = start.repository.clone() else {
        let name = f.annotations.get(user::SECRET).cloned().unwrap_or_default();
        let api = Api::<Secret>::namespaced(ctx.client.clone(), &f.namespace);
        return match api.get_opt(&name).await {
            Ok(Some(_)) => Ok(None),
            Ok(None) => Err(format!(
                "Secret {}/{name} named by annotation {} does not exist: create it (keys \
                 RESTIC_REPOSITORY, RESTIC_PASSWORD, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) \
                 or remove the annotation",
                f.namespace,
                user::SECRET
            )),
            Err(e) => Err(describe_kube_error(
                &e,
                &format!("get secret {}/{name}", f.namespace),
            )),
        };
    };
    if ctx.central.is_none() {
        let found = credentials::central_secret(&ctx.client, &s.cluster).await;
        ctx.central = Some(found.and_then(|c| central_keys(&c)).map_err(|e| match e {
            CentralError::Unreadable { .. } => e.to_string(),
            _ => format!(
                "{e}, or give the PVC its own Secret with annotation {}",
                user::SECRET
            ),
        }));
    }
    let central = ctx
        .central
        .as_ref()
        .expect("set above")
        .as_ref()
        .map_err(Clone::clone)?;
    Ok(Some(RunCredentials {
        password: credentials::derive_repository_password(&central.master, &repository),
        repository,
        access_key_id: central.access_key_id.clone(),
        secret_access_key: central.secret_access_key.clone(),
        region: ctx
            .cfg
            .restic
            .aws_default_region
            .clone()
            .or_else(|| ctx.cfg.restic.aws_region.clone()),
        ca_bundle: credentials::load_ca_bundle(&ctx.cfg.common, &ctx.cfg.restic)?,
    }))
}

/// What the scheduler uses of the central Secret.
struct Central {
    master: String,
    access_key_id: String,
    secret_access_key: String,
}

/// The keys the scheduler needs of the central Secret; Err names the first one missing.
fn central_keys(c: &CentralSecret) -> Result<Central, CentralError> {
    Ok(Central {
        master: c.require(secret_keys::MASTER_PASSWORD)?,
        access_key_id: c.require(secret_keys::MOVER_ACCESS_KEY_ID)?,
        secret_access_key: c.require(secret_keys::MOVER_SECRET_ACCESS_KEY)?,
    })
}

/// What the consistency steps before a mover Job produced.
struct Prepared {
    /// The temporary PVC the mover reads (Snapshot, Clone).
    claim: Option<String>,
    /// Snapshot tags: copy method and hook outcomes.
    tags: Vec<String>,
    /// Direct with post hooks: owed until the result is harvested.
    post_pending: bool,
}

/// Hooks and point-in-time copy before the mover Job of one backup. Err: the backup
/// does not happen (recorded on the PVC and in an Event): (skip reason, message).
async fn prepare(
    ctx: &Ctx<'_>,
    pvc: &PersistentVolumeClaim,
    f: &plan::PvcFacts,
    start: &Start,
) -> Result<Prepared, (String, String)> {
    let client = &ctx.client;
    let ns = f.namespace.as_str();
    let method = start.copy.method;
    let copy_timeout = std::time::Duration::from_secs(ctx.cfg.scheduler.copy_timeout_secs);
    let pre_hooks = consistency::phase_hooks(&start.hooks, Phase::Pre);
    let post_hooks = consistency::phase_hooks(&start.hooks, Phase::Post);
    let api_err = |e: String| ("api_error".to_string(), e);
    if !start.hooks.is_empty() {
        // Recorded before anything runs: whoever comes next owes the post hooks.
        let state = HookState {
            job: start.job_name.clone(),
            deadline: consistency::deadline(
                &start.hooks,
                (method != CopyMethod::Direct).then_some(copy_timeout),
                ctx.now,
            ),
            post: post_hooks.clone(),
        };
        patch_pvc(
            ctx,
            pvc,
            json!({ cons::HOOK_STATE: serde_json::to_string(&state).unwrap_or_default() }),
        )
        .await
        .map_err(api_err)?;
    }
    let pre = consistency::run_phase(client, ns, Phase::Pre, &pre_hooks).await;
    if !pre.failures.is_empty() {
        ctx.events
            .warning(
                &pvc_ref(pvc),
                cons::reason::PRE_HOOK_FAILED,
                "Backup",
                format!(
                    "{}{}",
                    pre.failures.join("; "),
                    if pre.fail {
                        ": no backup was made (on-error: Fail)"
                    } else {
                        ": backing up anyway (on-error: Continue)"
                    }
                ),
            )
            .await;
    }
    let spec = CopySpec {
        method,
        namespace: f.namespace.clone(),
        pvc: f.name.clone(),
        pvc_uid: f.uid.clone(),
        job: start.job_name.clone(),
        snapshot_class: start.copy.snapshot_class.clone(),
        storage_class: start.copy.storage_class.clone(),
        size: start.copy.size.clone(),
    };
    let copy = if pre.fail || method == CopyMethod::Direct {
        Ok(())
    } else {
        let node = f
            .consumers
            .iter()
            .find(|c| c.running)
            .and_then(|c| c.node.clone());
        consistency::take_copy(client, &spec, node.as_deref(), copy_timeout).await
    };
    // The point in time is taken (or the backup is off): thaw the app.
    let post_now = pre.fail || method != CopyMethod::Direct;
    let post = if post_now {
        let post = consistency::run_phase(client, ns, Phase::Post, &post_hooks).await;
        if !post.failures.is_empty() {
            ctx.events
                .warning(
                    &pvc_ref(pvc),
                    cons::reason::POST_HOOK_FAILED,
                    "Backup",
                    post.failures.join("; "),
                )
                .await;
        }
        Some(post)
    } else {
        None
    };
    let hooks_note = match &post {
        Some(p) => format!("pre={} post={}", pre.word(), p.word()),
        None => format!("pre={}", pre.word()),
    };
    let mut fail: Option<(&str, &str, String)> = None;
    if pre.fail {
        fail = Some((
            cons::RESULT_PRE_HOOK_FAILED,
            cons::reason::PRE_HOOK_FAILED,
            pre.failures.join("; "),
        ));
    } else if let Err(e) = &copy {
        fail = Some((
            cons::RESULT_COPY_FAILED,
            cons::reason::COPY_FAILED,
            e.clone(),
        ));
    } else if method == CopyMethod::Snapshot
        && let Err(e) = consistency::restore_pvc(client, &spec).await
    {
        fail = Some((cons::RESULT_COPY_FAILED, cons::reason::COPY_FAILED, e));
    }
    let mut ann = json!({ cons::LAST_HOOKS: hooks_note, cons::LAST_COPY_METHOD: method.as_str() });
    if post_now && !start.hooks.is_empty() {
        ann[cons::HOOK_STATE] = json!(null);
    }
    if let Some((kind, event_reason, why)) = fail {
        if method != CopyMethod::Direct
            && let Err(e) = consistency::remove_copies(client, ns, &start.job_name).await
        {
            tracing::warn!("{e}");
        }
        // Counts as an attempt: retried at the next due time, not in a tight loop.
        ann[status::LAST_ATTEMPT] = json!(ctx.now.to_string());
        ann[status::LAST_RESULT] = json!(format!("Failed: {kind}"));
        ann[status::SKIPPED] = json!(null);
        if let Some(v) = &start.backup_now {
            ann[status::BACKUP_NOW_SERVED] = json!(v);
        }
        if event_reason == cons::reason::COPY_FAILED {
            ctx.events
                .warning(&pvc_ref(pvc), event_reason, "Backup", why.clone())
                .await;
        }
        let _ = patch_pvc(ctx, pvc, ann).await;
        return Err((
            kind.to_string(),
            format!("{}/{}: backup not made: {why}", f.namespace, f.name),
        ));
    }
    patch_pvc(ctx, pvc, ann).await.map_err(api_err)?;
    let mut tags = vec![
        format!("{}={}", cons::TAG_COPY_METHOD, method.tag()),
        format!("{}={}", cons::TAG_PRE_HOOK, pre.word()),
    ];
    if let Some(p) = &post {
        tags.push(format!("{}={}", cons::TAG_POST_HOOK, p.word()));
    }
    Ok(Prepared {
        claim: (method != CopyMethod::Direct).then(|| start.job_name.clone()),
        tags,
        post_pending: !post_now && !post_hooks.is_empty(),
    })
}

/// A PVC's owed post hooks (annotation [`cons::HOOK_STATE`]) whose pass died: run them
/// once the record's deadline passed and no Job of that backup exists (a Job's hooks
/// run when its result is harvested). Ok(Some(job)): a pass may still be at work on
/// this PVC; leave it alone.
async fn settle_hooks(
    ctx: &Ctx<'_>,
    pvc: &mut PersistentVolumeClaim,
    jobs: &[Job],
    report: &mut PassReport,
) -> Result<Option<String>, String> {
    let Some(raw) = pvc.annotations().get(cons::HOOK_STATE).cloned() else {
        return Ok(None);
    };
    let ns = pvc.namespace().unwrap_or_default();
    let Some(state) = HookState::parse(&raw) else {
        tracing::warn!(namespace = %ns, pvc = %pvc.name_any(), "unreadable {}; removed", cons::HOOK_STATE);
        patch_pvc(ctx, pvc, json!({ cons::HOOK_STATE: null })).await?;
        pvc.annotations_mut().remove(cons::HOOK_STATE);
        return Ok(None);
    };
    if jobs
        .iter()
        .any(|j| j.namespace().as_deref() == Some(ns.as_str()) && j.name_any() == state.job)
    {
        return Ok(None);
    }
    if ctx.now < state.deadline {
        return Ok(Some(state.job));
    }
    let post = consistency::run_phase(&ctx.client, &ns, Phase::Post, &state.post).await;
    tracing::warn!(namespace = %ns, pvc = %pvc.name_any(), job = %state.job, outcome = post.word(), "ran the post hooks of an interrupted backup");
    let note = format!("pre=Interrupted post={}", post.word());
    patch_pvc(
        ctx,
        pvc,
        json!({ cons::HOOK_STATE: null, cons::LAST_HOOKS: note }),
    )
    .await?;
    pvc.annotations_mut().remove(cons::HOOK_STATE);
    let (reason_, msg) = if post.failures.is_empty() {
        (
            cons::reason::POST_HOOK_FAILED,
            format!(
                "the backup {} was interrupted after its pre hooks; its post hooks ran now",
                state.job
            ),
        )
    } else {
        (
            cons::reason::POST_HOOK_FAILED,
            format!(
                "the backup {} was interrupted after its pre hooks; its post hooks failed: {}",
                state.job,
                post.failures.join("; ")
            ),
        )
    };
    if post.failures.is_empty() {
        ctx.events
            .normal(&pvc_ref(pvc), "PostHooksRecovered", "Backup", msg)
            .await;
    } else {
        ctx.events
            .warning(&pvc_ref(pvc), reason_, "Backup", msg)
            .await;
    }
    report.metrics.add(
        HOOK_METRIC,
        "Hooks run by the scheduler, by phase and outcome",
        &[("phase", "post"), ("result", post.word())],
        1.0,
    );
    Ok(None)
}

/// Metric of hook outcomes.
const HOOK_METRIC: &str = names::SCHEDULER_HOOKS;

/// Removes temporary VolumeSnapshots and PVCs of backups whose Job finished (a pass
/// that died before removing them) or never came (a pass killed before creating it,
/// once older than `STOWAGE_ORPHAN_GRACE_SECS`).
async fn sweep_copies(
    ctx: &Ctx<'_>,
    pvcs: &[PersistentVolumeClaim],
    jobs: &[Job],
    report: &mut PassReport,
) {
    let grace = ctx.cfg.scheduler.orphan_grace_secs as i64;
    let now = Timestamp::now();
    let stale = |ns: &str, job: &str, created: Option<Timestamp>| -> bool {
        match jobs
            .iter()
            .find(|j| j.namespace().as_deref() == Some(ns) && j.name_any() == job)
        {
            Some(j) => facts::job_finished(j).is_some(),
            None => created.is_none_or(|c| now.as_second() - c.as_second() >= grace),
        }
    };
    for p in pvcs {
        let l = p.labels();
        if l.get(contract::app::MANAGED_BY).map(String::as_str) != Some(contract::app::STOWAGE)
            || l.get(contract::app::COMPONENT).map(String::as_str) != Some(cons::COMPONENT_COPY)
            || p.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        let ns = p.namespace().unwrap_or_default();
        let job = l.get(cons::LABEL_JOB).cloned().unwrap_or_default();
        if stale(
            &ns,
            &job,
            p.metadata.creation_timestamp.as_ref().map(|t| t.0),
        ) {
            tracing::info!(namespace = %ns, pvc = %p.name_any(), "removing a temporary backup volume");
            if let Err(e) = consistency::delete_pvc(&ctx.client, &ns, &p.name_any()).await {
                // Retried by the next pass; only this copy's problem.
                report.problem(p, "cleanup", e);
            }
        }
    }
    // Only clusters that use snapshots are asked for them (the permission comes with
    // the `consistency` kustomize component).
    let uses_snapshots = pvcs.iter().any(|p| {
        p.annotations()
            .get(cons::COPY_METHOD)
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("snapshot"))
            || p.labels().get(contract::app::COMPONENT).map(String::as_str)
                == Some(cons::COMPONENT_COPY)
    });
    if !uses_snapshots {
        return;
    }
    match consistency::list_snapshots(&ctx.client).await {
        Ok(list) => {
            for (ns, name, job, created) in list {
                if stale(&ns, &job, created) {
                    tracing::info!(namespace = %ns, snapshot = %name, "removing a temporary VolumeSnapshot");
                    if let Err(e) = consistency::delete_snapshot(&ctx.client, &ns, &name).await {
                        tracing::warn!("{e} (the next pass retries)");
                    }
                }
            }
        }
        // Only the sweep of leftovers is lost (the next pass retries); backups that
        // need snapshots fail with their own Event.
        Err(e) => tracing::warn!("{e}"),
    }
}

/// Starts one backup. Ok(false): already started by an earlier run of this pass.
async fn start_backup(
    ctx: &mut Ctx<'_>,
    pvc: &PersistentVolumeClaim,
    f: &plan::PvcFacts,
    start: &Start,
) -> Result<bool, (String, String)> {
    let creds = match run_credentials(ctx, f, start).await {
        Ok(c) => c,
        Err(e) => {
            if !ctx.dry_run {
                let current = pvc.annotations().get(status::SKIPPED).cloned();
                let value = format!("{}: {e}", reason::CREDENTIALS_MISSING);
                if current.as_deref() != Some(value.as_str()) {
                    ctx.events
                        .warning(
                            &pvc_ref(pvc),
                            reason::CREDENTIALS_MISSING,
                            "Backup",
                            e.clone(),
                        )
                        .await;
                    let _ = patch_pvc(ctx, pvc, json!({ status::SKIPPED: value })).await;
                }
            }
            return Err((
                "credentials_missing".into(),
                format!("{}/{}: {e}", f.namespace, f.name),
            ));
        }
    };
    // Hooks and the point-in-time copy come first; a re-run of a pass whose Job exists
    // does neither again.
    let needs_prep = !start.hooks.is_empty() || start.copy.method != CopyMethod::Direct;
    let mut prepared: Option<Prepared> = None;
    if needs_prep && !ctx.dry_run {
        let exists = Api::<Job>::namespaced(ctx.client.clone(), &f.namespace)
            .get_opt(&start.job_name)
            .await
            .map_err(|e| {
                (
                    "api_error".to_string(),
                    describe_kube_error(&e, &format!("get job {}/{}", f.namespace, start.job_name)),
                )
            })?;
        prepared = Some(match exists {
            Some(_) => Prepared {
                claim: (start.copy.method != CopyMethod::Direct).then(|| start.job_name.clone()),
                tags: Vec::new(),
                post_pending: false,
            },
            None => prepare(ctx, pvc, f, start).await?,
        });
    }
    let secret_name = match (&creds, f.annotations.get(user::SECRET)) {
        (None, Some(own)) => own.clone(),
        _ => start.job_name.clone(),
    };
    let mut spec = MoverJobSpec::new(
        Operation::Backup,
        &start.job_name,
        &f.namespace,
        &f.name,
        &f.uid,
        &ctx.cfg.scheduler.mover_image,
        &secret_name,
    );
    spec.placement = start.placement.clone();
    spec.tolerations = start.tolerations.clone();
    spec.run_as = start.run_as.clone();
    if let Some(m) = &start.memory {
        spec.memory = m.clone();
    }
    if let Some(c) = &start.cpu {
        spec.cpu = c.clone();
    }
    spec.active_deadline_seconds = start.deadline_seconds;
    spec.ca_from_secret = creds.as_ref().is_some_and(|c| c.ca_bundle.is_some());
    let backup = BackupEnv {
        excludes: start.excludes.clone(),
        upload_kib_per_sec: start.upload_kib_per_sec,
        adopt_history: start.adopt_history,
        extra_tags: prepared
            .as_ref()
            .map(|p| p.tags.clone())
            .unwrap_or_default(),
    };
    spec.env = mover_job::mover_env(&ctx.cfg.restic, &ctx.cfg.common, Some(&backup));
    if let Some(p) = &prepared {
        spec.claim = p.claim.clone();
    }
    spec.extra_labels
        .insert(contract::app::INSTANCE.into(), start.policy.clone());
    let job = mover_job::mover_job(&spec);
    let ns = f.namespace.clone();
    if ctx.dry_run {
        tracing::info!(namespace = %ns, pvc = %f.name, job = %start.job_name, "would start backup (dry run)");
        return Ok(true);
    }
    let fail = |e: String| ("api_error".to_string(), e);
    let jobs = Api::<Job>::namespaced(ctx.client.clone(), &ns);
    let (job, fresh) = match jobs.create(&PostParams::default(), &job).await {
        Ok(j) => (j, true),
        Err(e) if is_status(&e, 409) => (
            jobs.get(&start.job_name).await.map_err(|e| {
                fail(describe_kube_error(
                    &e,
                    &format!("get job {ns}/{}", start.job_name),
                ))
            })?,
            false,
        ),
        Err(e) => {
            // Nobody would harvest this backup: its owed post hooks run now, its
            // temporary copy goes.
            if let Some(p) = &prepared {
                if p.post_pending {
                    let post = consistency::run_phase(
                        &ctx.client,
                        &ns,
                        Phase::Post,
                        &consistency::phase_hooks(&start.hooks, Phase::Post),
                    )
                    .await;
                    let _ = patch_pvc(ctx, pvc, json!({ cons::HOOK_STATE: null })).await;
                    tracing::warn!(namespace = %ns, pvc = %f.name, outcome = post.word(), "post hooks ran after the Job could not be created");
                }
                if p.claim.is_some() {
                    let _ = consistency::remove_copies(&ctx.client, &ns, &start.job_name).await;
                }
            }
            return Err(fail(describe_kube_error(
                &e,
                &format!("create job {ns}/{}", start.job_name),
            )));
        }
    };
    if let Some(creds) = &creds {
        credentials::create_run_secret(&ctx.client, &job, Operation::Backup, &f.uid, creds)
            .await
            .map_err(fail)?;
    }
    let mut ann = json!({
        status::LAST_ATTEMPT: ctx.now.to_string(),
        status::LAST_JOB: start.job_name,
        status::SKIPPED: null,
    });
    if let Some(v) = &start.backup_now {
        ann[status::BACKUP_NOW_SERVED] = json!(v);
    }
    patch_pvc(ctx, pvc, ann).await.map_err(fail)?;
    if fresh {
        ctx.events
            .normal(
                &pvc_ref(pvc),
                reason::BACKUP_STARTED,
                "Backup",
                format!(
                    "Job {} started (policy {}{}{})",
                    start.job_name,
                    start.policy,
                    if start.missed > 0 {
                        format!(", {} scheduled backups missed", start.missed)
                    } else {
                        String::new()
                    },
                    match (&start.storage, start.probe) {
                        (Some(st), true) => format!(
                            "; the probe of unreachable storage {st}: its result decides \
                             whether the other backups of that storage resume"
                        ),
                        _ => String::new(),
                    }
                ),
            )
            .await;
        tracing::info!(namespace = %ns, pvc = %f.name, job = %start.job_name, missed = start.missed, "backup started");
    }
    Ok(fresh)
}

/// Prints the password of a repository derived from the master password (for the
/// `restic` CLI in incidents).
pub fn repo_password(master: &str, repository: &str) -> String {
    credentials::derive_repository_password(master, repository)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(name: &str, created: &str) -> Job {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "a", "creationTimestamp": created,
                         "labels": {"stowage.io/pvc-uid": "u1", "stowage.io/operation": "backup"}}
        }))
        .unwrap()
    }

    fn pvc(annotations: serde_json::Value) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "a", "uid": "u1", "annotations": annotations}
        }))
        .unwrap()
    }

    #[test]
    fn adopts_only_a_job_newer_than_the_recorded_one() {
        let old = job("old", "2026-11-23T10:00:00Z");
        let new = job("new", "2026-11-23T11:00:00Z");
        let same_second = job("twin", "2026-11-23T11:00:00Z");
        // Nothing recorded: the Job a killed pass created is adopted.
        let none = pvc(json!({}));
        assert_eq!(
            unrecorded_job(&none, &[old.clone(), new.clone()]).map(|j| j.0),
            Some("new".into())
        );
        // The newest is recorded: an older Job (or one of the same second) is not
        // adopted, whatever the list order.
        let recorded =
            pvc(json!({status::LAST_JOB: "new", status::LAST_ATTEMPT: "2026-11-23T09:00:00Z"}));
        assert_eq!(unrecorded_job(&recorded, &[new.clone(), old.clone()]), None);
        assert_eq!(unrecorded_job(&recorded, &[old.clone(), new.clone()]), None);
        assert_eq!(unrecorded_job(&recorded, &[same_second, new.clone()]), None);
        // A newer Job than the recorded one: adopted.
        let behind = pvc(json!({status::LAST_JOB: "old"}));
        assert_eq!(
            unrecorded_job(&behind, &[new, old]).map(|j| j.0),
            Some("new".into())
        );
    }
}
