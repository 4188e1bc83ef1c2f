//! One gc pass against the cluster and the storage: gather facts (policies,
//! credentials, PVCs, running stowage pods, gc state), find the repositories, maintain
//! each (forget, prune, check, stale locks), delete finished mover Jobs (their per-run
//! Secrets, owned by the Job, go with it: Kubernetes' garbage collector), publish Events
//! and metrics, record the state. Problems of one repository never stop the others;
//! they make the pass fail at its end. A retention that would forget too much at once
//! is held back for its repository until confirmed (Event, metric; not a failure).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Result;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, ObjectReference, PersistentVolumeClaim, Pod, Secret,
};
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client, ResourceExt};
use stowage_common::backend::{BackendOptions, Storage};
use stowage_common::env::{GcConfig, ResticEnv, may_start};
use stowage_common::k8s::contract::{self, app, label, reason, run_secret_keys, secret_keys};
use stowage_common::k8s::credentials::{
    self, CentralError, derive_repository_password, secret_value,
};
use stowage_common::k8s::events::Events;
use stowage_common::k8s::policy::Policies;
use stowage_common::k8s::{describe_kube_error, is_status, mover_job};
use stowage_common::location::Location;
use stowage_common::metrics::{Registry, names};
use stowage_common::repo::RepoAccess;
use stowage_common::{Error, discover, locks};
use tokio::sync::Semaphore;

use crate::maintain::{self, ForgetGuard, Outcome, Work};
use crate::plan::{self, Creds, JobFacts, LocksContext, Pvc, Target};
use crate::retention::{ForgetLimit, Rules};
use crate::state::{self, Stored};
use crate::triage;

/// The program's name as reporter of Events and metrics job.
pub const PROGRAM: &str = "stowage-gc";

/// Repositories maintained at once (each holds little memory; S3 latency dominates).
pub const REPO_CONCURRENCY: usize = 4;

#[derive(Debug, Clone, Default)]
pub struct PassOptions {
    pub dry_run: bool,
    /// The pass's clock (`--now`): what is due, how old locks and Jobs are, the
    /// manual-backup TTL, and the times recorded in the state and metrics.
    pub now: Timestamp,
    /// Confirmations of held-back retention by repository identity (`bucket/prefix`):
    /// `--confirm-forget REPO=COUNT`, for repositories without a PVC to annotate. A
    /// PVC's annotation `stowage.io/confirm-forget` wins.
    pub confirm_forget: BTreeMap<String, String>,
}

/// One repository's result.
#[derive(Debug)]
pub struct RepoReport {
    pub target: Target,
    pub outcome: Result<Outcome, String>,
    /// Not opened in this pass (its last visit's results stand).
    pub skipped: Option<Skipped>,
    /// Rules fingerprint of the visit (`triage::rules_fingerprint`).
    pub fingerprint: Option<String>,
}

/// Why a repository was not opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skipped {
    /// Nothing changed and nothing is due.
    Unchanged,
    /// It has work, but the pass budget was used: the next pass takes it first.
    Deferred,
}

impl RepoReport {
    fn done(target: Target, outcome: Result<Outcome, String>) -> Self {
        Self {
            target,
            outcome,
            skipped: None,
            fingerprint: None,
        }
    }

    fn skipped(target: Target, why: Skipped) -> Self {
        Self {
            target,
            outcome: Ok(Outcome::default()),
            skipped: Some(why),
            fingerprint: None,
        }
    }
}

/// A repository with its work for this pass, before triage.
struct Planned {
    target: Target,
    creds: RepoCreds,
    work: Work,
    fingerprint: String,
    due: triage::Due,
}

#[derive(Debug, Default)]
pub struct PassReport {
    pub repositories: Vec<RepoReport>,
    /// Errors (the pass fails at its end).
    pub errors: Vec<String>,
    /// Damaged repositories: (repository, what is wrong).
    pub damaged: Vec<(String, String)>,
    pub orphans: Vec<String>,
    pub jobs_deleted: Vec<String>,
    /// Repositories whose retention was held back: (repository, why).
    pub blocked: Vec<(String, String)>,
    /// S3 requests sent (discovery and repositories).
    pub s3_requests: u64,
    /// Repositories not opened: nothing to do / work left for the next pass.
    pub unchanged: usize,
    pub deferred: usize,
    pub metrics: Registry,
}

impl PassReport {
    pub fn failed(&self) -> bool {
        !self.errors.is_empty() || !self.damaged.is_empty()
    }
}

/// Password and keys of one repository.
#[derive(Clone)]
pub struct RepoCreds {
    pub password: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub region: Option<String>,
}

/// Opens access to a repository with explicit credentials (no request sent yet).
pub fn access_for(url: &str, creds: &RepoCreds, cfg: &GcConfig) -> Result<RepoAccess, Error> {
    let endpoint = cfg
        .restic
        .aws_endpoint_url_s3
        .as_deref()
        .or(cfg.restic.aws_endpoint_url.as_deref());
    let location = Location::parse(url, endpoint)?;
    let restic = ResticEnv {
        aws_access_key_id: creds.access_key_id.clone(),
        aws_secret_access_key: creds.secret_access_key.clone(),
        aws_default_region: creds
            .region
            .clone()
            .or(cfg.restic.aws_default_region.clone()),
        ..cfg.restic.clone()
    };
    let storage = Storage::open(&location, &restic, &cfg.common)?;
    let mut access = RepoAccess::new(
        location,
        storage,
        creds.password.clone(),
        cfg.common.cache_dir.clone(),
    );
    access.backend_options = BackendOptions::from_env(&cfg.common);
    Ok(access)
}

struct Facts {
    policies: Policies,
    master: Option<String>,
    gc_keys: (Option<String>, Option<String>),
    pvcs: Vec<Pvc>,
    ns_labels: BTreeMap<String, BTreeMap<String, String>>,
    pvc_objects: BTreeMap<(String, String), ObjectReference>,
    user_secrets: BTreeMap<(String, String), Secret>,
    live_pods: Option<BTreeSet<String>>,
}

async fn gather(client: &Client, cfg: &GcConfig, report: &mut PassReport) -> Result<Facts> {
    let g = &cfg.gc;
    let cms = Api::<ConfigMap>::namespaced(client.clone(), &g.cluster.system_namespace);
    // Policies that cannot be read are not "no policies": the default retention would
    // forget what a PVC's own policy keeps. The pass stops before it touches anything.
    let doc = cms
        .get_opt(&g.cluster.policies_configmap)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "{}. Nothing was forgotten or pruned in this pass",
                describe_kube_error(
                    &e,
                    &format!(
                        "get configmap {}/{}",
                        g.cluster.system_namespace, g.cluster.policies_configmap
                    ),
                )
            )
        })?
        .and_then(|c| c.data)
        .and_then(|d| d.get(contract::POLICIES_KEY).cloned())
        .unwrap_or_default();
    let policies = Policies::parse(&doc).unwrap_or_else(|e| {
        report.errors.push(format!(
            "ConfigMap {}/{} key {}: {e}; the default retention applies to every repository",
            g.cluster.system_namespace,
            g.cluster.policies_configmap,
            contract::POLICIES_KEY
        ));
        Policies::default()
    });
    // Without the central Secret (or its master password) only repositories with a
    // Secret of their own can be opened: the pass goes on with those.
    let central = match credentials::central_secret(client, &g.cluster).await {
        Err(e @ CentralError::Unreadable { .. }) => return Err(anyhow::anyhow!(e)),
        found => found,
    };
    let master = central
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|c| c.require(secret_keys::MASTER_PASSWORD));
    let gc_keys = match &central {
        Ok(c) => (
            c.value(secret_keys::GC_ACCESS_KEY_ID),
            c.value(secret_keys::GC_SECRET_ACCESS_KEY),
        ),
        Err(_) => (None, None),
    };
    // The gc keys may also come from the environment (AWS_ACCESS_KEY_ID...).
    let gc_keys = (
        gc_keys.0.or(cfg.restic.aws_access_key_id.clone()),
        gc_keys.1.or(cfg.restic.aws_secret_access_key.clone()),
    );
    if let Err(e) = &master {
        report.errors.push(format!(
            "{e}; repositories with derived passwords cannot be opened"
        ));
    }
    let master = master.ok();
    let pvc_list = Api::<PersistentVolumeClaim>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| {
            anyhow::anyhow!(describe_kube_error(
                &e,
                "list persistentvolumeclaims in all namespaces"
            ))
        })?;
    // A namespace's opt-in label is the policy of its PVCs without one of their own.
    let ns_labels = Api::<Namespace>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| anyhow::anyhow!(describe_kube_error(&e, "list namespaces")))?
        .items
        .iter()
        .map(|n| (n.name_any(), n.labels().clone()))
        .collect();
    let mut pvcs = Vec::new();
    let mut pvc_objects = BTreeMap::new();
    let mut user_secrets = BTreeMap::new();
    for p in &pvc_list.items {
        let ns = p.namespace().unwrap_or_default();
        let mut pvc = Pvc {
            namespace: ns.clone(),
            name: p.name_any(),
            uid: p.metadata.uid.clone().unwrap_or_default(),
            labels: p.labels().clone(),
            annotations: p.annotations().clone(),
            secret_repository: None,
        };
        if let Some(name) = pvc.annotations.get(contract::user::SECRET).cloned() {
            match Api::<Secret>::namespaced(client.clone(), &ns)
                .get_opt(&name)
                .await
            {
                Ok(Some(s)) => {
                    pvc.secret_repository = secret_value(&s, run_secret_keys::RESTIC_REPOSITORY);
                    if pvc.secret_repository.is_none() {
                        report.errors.push(format!(
                            "Secret {ns}/{name} (PVC {ns}/{}) has no {}: its repository is not \
                             maintained",
                            pvc.name,
                            run_secret_keys::RESTIC_REPOSITORY
                        ));
                    }
                    user_secrets.insert((ns.clone(), name), s);
                }
                Ok(None) => tracing::warn!(
                    namespace = %ns, pvc = %pvc.name,
                    "Secret {name} named by the PVC does not exist; its repository is not maintained"
                ),
                Err(e) => report
                    .errors
                    .push(describe_kube_error(&e, &format!("get secret {ns}/{name}"))),
            }
        }
        pvc_objects.insert(
            (ns.clone(), pvc.name.clone()),
            kube::Resource::object_ref(p, &()),
        );
        pvcs.push(pvc);
    }
    let live_pods = match Api::<Pod>::all(client.clone())
        .list(&ListParams::default().labels(&format!("{}={}", app::MANAGED_BY, app::STOWAGE)))
        .await
    {
        Ok(list) => {
            let mut names: BTreeSet<String> = list
                .items
                .iter()
                .filter(|p| pod_live(p))
                .map(|p| p.name_any())
                .collect();
            // Pods of stowage's own namespace (gc itself, manual runs) count too.
            if let Ok(own) = Api::<Pod>::namespaced(client.clone(), &g.cluster.system_namespace)
                .list(&ListParams::default())
                .await
            {
                names.extend(
                    own.items
                        .iter()
                        .filter(|p| pod_live(p))
                        .map(|p| p.name_any()),
                );
            }
            Some(names)
        }
        Err(e) => {
            tracing::warn!(
                "{}; no lock is removed for its age in this pass",
                describe_kube_error(&e, "list pods in all namespaces")
            );
            None
        }
    };
    Ok(Facts {
        policies,
        master,
        gc_keys,
        pvcs,
        ns_labels,
        pvc_objects,
        user_secrets,
        live_pods,
    })
}

fn pod_live(p: &Pod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Running" | "Pending") | None
    )
}

/// Runs one pass. Errors that stop the whole pass (API down, listing forbidden) are
/// returned; everything else is in the report.
pub async fn run(client: Client, cfg: &GcConfig, opts: PassOptions) -> Result<PassReport> {
    let started = std::time::Instant::now();
    let g = &cfg.gc;
    let mut report = PassReport::default();
    let events = Events::new(client.clone(), PROGRAM, std::env::var("POD_NAME").ok());
    let facts = gather(&client, cfg, &mut report).await?;
    let requests = Arc::new(AtomicU64::new(0));

    // Discovery.
    let mut discovered = Vec::new();
    if let Some(base) = &g.cluster.repository_base {
        let endpoint = cfg
            .restic
            .aws_endpoint_url_s3
            .as_deref()
            .or(cfg.restic.aws_endpoint_url.as_deref());
        match Location::parse(base, endpoint)? {
            Location::S3(loc) => {
                let restic = ResticEnv {
                    aws_access_key_id: facts.gc_keys.0.clone(),
                    aws_secret_access_key: facts.gc_keys.1.clone(),
                    ..cfg.restic.clone()
                };
                let settings = stowage_common::s3::S3Settings::from_env(loc, &restic, &cfg.common)?;
                let found = discover::repositories(&settings, &requests).await?;
                tracing::info!(count = found.len(), base = %base, "repositories found");
                for f in found {
                    let url = Location::S3(f.location).to_string();
                    discovered.push((f.namespace, f.pvc, url));
                }
            }
            Location::Local(p) => {
                for ns in read_dirs(&p) {
                    for pvc in read_dirs(&p.join(&ns)) {
                        if p.join(&ns).join(&pvc).join("config").is_file() {
                            let url = format!("{}/{ns}/{pvc}", p.display());
                            discovered.push((ns.clone(), pvc, url));
                        }
                    }
                }
            }
        }
    } else {
        tracing::info!("STOWAGE_REPOSITORY_BASE is not set: only repositories named by PVCs");
    }
    let (targets, warnings) = plan::targets(
        &discovered,
        &facts.pvcs,
        &facts.ns_labels,
        &facts.policies,
        &g.cluster.backup_label,
    );
    let manual_ttl = Some(g.manual_backup_ttl.trim())
        .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("off"));
    for w in warnings {
        tracing::warn!("{w}");
    }

    let mut stored =
        match state::load(&client, &g.cluster.system_namespace, &g.gc_state_configmap).await {
            Ok(s) => s,
            Err(e) => {
                report.errors.push(e);
                Stored::default()
            }
        };
    let state = &mut stored.repos;

    // Repositories: listed without opening them, opened only for work, most urgent
    // first, a few at a time on blocking threads, none started once the pass budget is
    // used (triage.rs).
    let ctx = LocksContext {
        stale_after: SignedDuration::from_mins(g.stale_lock_minutes as i64),
        live_pods: facts.live_pods.clone(),
        this_host: locks::this_hostname(),
    };
    let budget = cfg.common.pass_budget();
    let deadline = budget.map(|b| started + b);
    let limit = ForgetLimit {
        max_percent: g.forget_max_percent,
        min_count: g.forget_guard_min as usize,
    };
    let mut planned: Vec<Planned> = Vec::new();
    for target in targets {
        let creds = match resolve_creds(&target, &facts, cfg) {
            Ok(c) => c,
            Err(e) => {
                report.repositories.push(RepoReport::done(target, Err(e)));
                continue;
            }
        };
        let st = state.get(&target.identity).cloned().unwrap_or_default();
        let ttl = manual_ttl.filter(|_| target.manual);
        let rules = match ttl {
            Some(ttl) => Rules::manual_ttl(ttl, opts.now)
                .map_err(|e| format!("STOWAGE_MANUAL_BACKUP_TTL: {e}")),
            None => Rules::from_policy(&target.retention),
        };
        let rules = match rules {
            Ok(r) => r,
            Err(e) => {
                report.repositories.push(RepoReport::done(target, Err(e)));
                continue;
            }
        };
        let fingerprint = triage::rules_fingerprint(&rules, ttl);
        // A repository found damaged is checked at every pass (the alert clears as soon
        // as it is repaired) and never pruned meanwhile (a repair may need its data).
        let check_due =
            st.damaged.is_some() || plan::due(st.last_check, opts.now, g.check_interval_hours);
        let prune_due = st.damaged.is_none()
            && (st.prune_wanted || plan::due(st.last_prune, opts.now, g.prune_interval_hours));
        let due = triage::Due {
            check: check_due,
            prune: prune_due,
            since: triage::due_since(
                &st,
                check_due,
                prune_due,
                g.check_interval_hours,
                g.prune_interval_hours,
            ),
        };
        let (confirmation, how) = plan::confirmation(
            &target,
            &opts.confirm_forget,
            st.forget_confirmed.as_deref(),
        );
        let work = Work {
            name: target.repository.clone(),
            rules,
            forget: true,
            guard: Some(ForgetGuard {
                limit,
                confirmation,
                how,
            }),
            unlock: true,
            prune: prune_due,
            check: check_due.then(|| plan::read_subset(g.check_read_data_percent, st.checks)),
            unused_threshold_percent: g.prune_unused_percent,
            locks: ctx.clone(),
            dry_run: opts.dry_run,
            progress_interval: cfg.common.progress_interval(),
            now: opts.now,
            deadline,
        };
        planned.push(Planned {
            target,
            creds,
            work,
            fingerprint,
            due,
        });
    }
    let listings = list_all(&planned, cfg, &requests).await;
    let mut visits = Vec::with_capacity(planned.len());
    for (p, l) in planned.iter().zip(&listings) {
        let st = state.get(&p.target.identity).cloned().unwrap_or_default();
        let l = match l {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(repository = %p.target.repository, "cannot list the repository ({e}): opened to report it");
                None
            }
        };
        visits.push(triage::visit(&st, l, &p.fingerprint, p.due, opts.now));
    }
    let names: Vec<(&str, &triage::Visit)> = planned
        .iter()
        .zip(&visits)
        .map(|(p, v)| (p.target.identity.as_str(), v))
        .collect();
    let order: BTreeMap<String, usize> = triage::order(&names)
        .into_iter()
        .enumerate()
        .map(|(i, n)| (n.to_string(), i))
        .collect();
    let mut queue: Vec<(usize, Planned)> = Vec::new();
    for (p, v) in planned.into_iter().zip(visits) {
        match (v, order.get(&p.target.identity)) {
            (triage::Visit::Open { why, .. }, Some(&rank)) => {
                tracing::debug!(repository = %p.target.repository, "opened: {why}");
                queue.push((rank, p));
            }
            _ => report
                .repositories
                .push(RepoReport::skipped(p.target, Skipped::Unchanged)),
        }
    }
    queue.sort_by_key(|(rank, _)| *rank);
    let total = queue.len();
    tracing::info!(
        repositories = total + report.repositories.len(),
        to_open = total,
        "repositories listed"
    );
    let queue = Arc::new(std::sync::Mutex::new(
        queue
            .into_iter()
            .map(|(_, p)| p)
            .collect::<std::collections::VecDeque<_>>(),
    ));
    let mut workers = Vec::new();
    let opened = Arc::new(AtomicU64::new(0));
    for _ in 0..REPO_CONCURRENCY {
        let (queue, cfg2, requests, opened) =
            (queue.clone(), cfg.clone(), requests.clone(), opened.clone());
        workers.push(tokio::spawn(async move {
            let mut done = Vec::new();
            loop {
                let Some(p) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front() else {
                    break;
                };
                if !may_start(started.elapsed(), budget) {
                    done.push(RepoReport::skipped(p.target, Skipped::Deferred));
                    continue;
                }
                let i = opened.fetch_add(1, Ordering::Relaxed) + 1;
                let Planned {
                    target,
                    creds,
                    work,
                    fingerprint,
                    ..
                } = p;
                let url = target.repository.clone();
                let cfg3 = cfg2.clone();
                let requests = requests.clone();
                let outcome = tokio::task::spawn_blocking(move || {
                    tracing::info!(repository = %url, "[{i}/{total}] maintaining");
                    let access = access_for(&url, &creds, &cfg3)?;
                    let r = maintain::run(&access, &work);
                    if let Some(s) = access.storage.stats() {
                        requests.fetch_add(s.requests.load(Ordering::Relaxed), Ordering::Relaxed);
                    }
                    r
                })
                .await
                .map_err(|e| format!("repository task failed: {e}"))
                .and_then(|r| r.map_err(|e| e.to_string()));
                let mut r = RepoReport::done(target, outcome);
                r.fingerprint = Some(fingerprint);
                done.push(r);
            }
            done
        }));
    }
    for w in workers {
        match w.await {
            Ok(r) => report.repositories.extend(r),
            Err(e) => report.errors.push(format!("repository task failed: {e}")),
        }
    }
    report
        .repositories
        .sort_by(|a, b| a.target.identity.cmp(&b.target.identity));
    let count = |k: Skipped| {
        report
            .repositories
            .iter()
            .filter(|r| r.skipped == Some(k))
            .count()
    };
    (report.unchanged, report.deferred) = (count(Skipped::Unchanged), count(Skipped::Deferred));
    if report.deferred > 0 {
        tracing::info!(
            deferred = report.deferred,
            "pass budget used (STOWAGE_PASS_BUDGET_SECS): {} repositories with work wait for the \
             next pass, which takes them first (most overdue first)",
            report.deferred
        );
    }

    // Results: state, logs, Events, metrics.
    for r in &report.repositories {
        let t = &r.target;
        let (ns, pvc) = t
            .pvc
            .as_ref()
            .map(|p| (p.namespace.as_str(), p.name.as_str()))
            .unwrap_or(("", ""));
        let labels = [
            ("repository", t.identity.as_str()),
            ("namespace", ns),
            ("persistentvolumeclaim", pvc),
        ];
        if t.is_orphan() {
            report.orphans.push(t.repository.clone());
            tracing::warn!(repository = %t.repository, "orphan: no PVC exists for this repository; kept (never deleted), default retention applies");
            report.metrics.gauge(
                names::GC_ORPHAN,
                "Repositories whose PVC does not exist (never deleted)",
                &[("repository", &t.identity)],
                1.0,
            );
        }
        let on = t
            .pvc
            .as_ref()
            .and_then(|p| {
                facts
                    .pvc_objects
                    .get(&(p.namespace.clone(), p.name.clone()))
                    .cloned()
            })
            .unwrap_or_else(|| state_ref(cfg));
        if let Some(why) = r.skipped {
            // Not opened: what its last visit found still holds, and is pushed again
            // (every push replaces the whole group on the Pushgateway).
            if let Some(st) = state.get(&t.identity) {
                skipped_metrics(&mut report.metrics, st, &t.identity, &labels);
            }
            report.metrics.add(
                names::GC_REPOSITORIES,
                "Repositories maintained in this pass, by result",
                &[(
                    "result",
                    match why {
                        Skipped::Unchanged => "unchanged",
                        Skipped::Deferred => "deferred",
                    },
                )],
                1.0,
            );
            continue;
        }
        match &r.outcome {
            Err(e) => {
                // Opened again next pass, so the error is reported until it is gone.
                if let Some(st) = state.get_mut(&t.identity) {
                    st.listing = None;
                }
                let msg = format!("repository {}: {e}", t.repository);
                tracing::error!("{msg}");
                report.errors.push(msg.clone());
                report.metrics.gauge(
                    names::GC_CHECK_OK,
                    "1 if the last check of the repository found no error",
                    &[("repository", &t.identity)],
                    0.0,
                );
                if !opts.dry_run {
                    events
                        .warning(&on, reason::REPOSITORY_DAMAGED, "Maintain", msg)
                        .await;
                }
            }
            Ok(o) => {
                let st = state.entry(t.identity.clone()).or_default();
                if !opts.dry_run {
                    st.visited = Some(opts.now);
                    st.snapshots = Some(o.snapshots_after);
                    st.bytes = Some(o.bytes_after);
                    // Retention applied in full: the same listing and rules next time
                    // need no visit. Otherwise (busy) the next pass opens it again.
                    st.listing = o.snapshot_names.as_deref().map(triage::listing_hash);
                    st.rules = r.fingerprint.clone().filter(|_| st.listing.is_some());
                    st.recheck_at = o.recheck_at;
                    st.retention_blocked = o.blocked.as_ref().map(|b| b.would_forget.len());
                    if o.confirmed.is_some() {
                        st.forget_confirmed = o.confirmed.clone();
                    }
                }
                if let Some(b) = &o.blocked {
                    report.blocked.push((t.repository.clone(), b.why.clone()));
                    report.metrics.gauge(
                        names::GC_RETENTION_BLOCKED,
                        "Snapshots a held-back retention would forget (until confirmed)",
                        &labels,
                        b.would_forget.len() as f64,
                    );
                    if !opts.dry_run {
                        events
                            .warning(
                                &on,
                                reason::RETENTION_BLOCKED,
                                "Forget",
                                format!("repository {}: {}", t.repository, b.why),
                            )
                            .await;
                    }
                }
                if let Some(c) = &o.confirmed
                    && !opts.dry_run
                {
                    events
                        .normal(
                            &on,
                            reason::RETENTION_CONFIRMED,
                            "Forget",
                            format!(
                                "repository {}: forgot {} of {} snapshots at once, as confirmed \
                                 ({c})",
                                t.repository,
                                o.forgotten.len(),
                                o.snapshots_before
                            ),
                        )
                        .await;
                }
                if o.pruned {
                    st.last_prune = Some(opts.now);
                    st.prune_wanted = false;
                    if !opts.dry_run {
                        events
                            .normal(
                                &on,
                                reason::REPOSITORY_PRUNED,
                                "Prune",
                                format!(
                                    "pruned repository {}: {} bytes reclaimed",
                                    t.repository,
                                    o.reclaimed()
                                ),
                            )
                            .await;
                    }
                }
                if let Some(findings) = &o.check
                    && !opts.dry_run
                {
                    st.last_check = Some(opts.now);
                    st.checks = st.checks.wrapping_add(1);
                    st.prune_wanted |= o.prune_wanted;
                    st.damaged = (!findings.is_empty()).then(|| findings.join("; "));
                }
                // The last check's result, also on passes without a check: every push
                // replaces the whole group on the Pushgateway, so a result pushed once
                // would vanish an hour later (and its alert with it).
                if let Some(last) = st.last_check {
                    report.metrics.gauge(
                        names::GC_CHECK_OK,
                        "1 if the last check of the repository found no error",
                        &[("repository", &t.identity)],
                        if st.damaged.is_some() { 0.0 } else { 1.0 },
                    );
                    report.metrics.gauge(
                        names::GC_CHECK_LAST,
                        "Time of the last check of the repository",
                        &[("repository", &t.identity)],
                        last.as_second() as f64,
                    );
                }
                if let Some(findings) = &o.check
                    && !findings.is_empty()
                {
                    let what = findings.join("; ");
                    report.damaged.push((t.repository.clone(), what.clone()));
                    if !opts.dry_run {
                        events
                            .warning(
                                &on,
                                reason::REPOSITORY_DAMAGED,
                                "Check",
                                format!("repository {} is damaged: {what}", t.repository),
                            )
                            .await;
                    }
                }
                for l in &o.locks_removed {
                    if !opts.dry_run {
                        events
                            .normal(
                                &on,
                                reason::STALE_LOCK_REMOVED,
                                "Unlock",
                                format!(
                                    "removed lock {} of repository {} ({}): {}",
                                    l.file, t.repository, l.holder, l.why
                                ),
                            )
                            .await;
                    }
                }
                report.metrics.gauge(
                    names::GC_SNAPSHOTS,
                    "Snapshots in the repository after this pass",
                    &labels,
                    o.snapshots_after as f64,
                );
                report.metrics.gauge(
                    names::GC_REPOSITORY_BYTES,
                    "Size of the repository in bytes",
                    &labels,
                    o.bytes_after as f64,
                );
                report.metrics.add(
                    names::GC_FORGOTTEN,
                    "Snapshots forgotten in this pass",
                    &[],
                    o.forgotten.len() as f64,
                );
                report.metrics.add(
                    names::GC_RECLAIMED_BYTES,
                    "Bytes reclaimed by prune in this pass",
                    &[],
                    o.reclaimed() as f64,
                );
                report.metrics.add(
                    names::GC_LOCKS_REMOVED,
                    "Stale locks removed in this pass",
                    &[],
                    o.locks_removed.len() as f64,
                );
                if let Some(u) = o.unused_bytes {
                    report.metrics.gauge(
                        names::GC_UNUSED_BYTES,
                        "Unused bytes in the repository (measured at the check)",
                        &labels,
                        u as f64,
                    );
                }
            }
        }
        let state_label = match &r.outcome {
            Err(_) => "error",
            Ok(o) if o.damaged() => "damaged",
            Ok(o) if o.busy.is_some() => "busy",
            Ok(_) => "ok",
        };
        report.metrics.add(
            names::GC_REPOSITORIES,
            "Repositories maintained in this pass, by result",
            &[("result", state_label)],
            1.0,
        );
    }

    cleanup(&client, cfg, &opts, &mut report).await;

    // The time of the last pass without errors is kept with the state: it is pushed by
    // every pass, failed ones included, so that "gc has not succeeded for hours" can
    // be seen on the Pushgateway (whose group each push replaces).
    let previous_success = stored.last_success;
    if !report.failed() {
        stored.last_success = Some(opts.now);
    }
    if !opts.dry_run
        && let Err(e) = state::save(
            &client,
            &g.cluster.system_namespace,
            &g.gc_state_configmap,
            &stored,
        )
        .await
    {
        report.errors.push(e);
        stored.last_success = previous_success;
    }
    report.s3_requests = requests.load(Ordering::Relaxed);
    report.metrics.gauge(
        names::GC_ERRORS,
        "Errors in this pass",
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
        opts.now.as_second() as f64,
    );
    if let Some(t) = stored.last_success {
        report.metrics.gauge(
            names::GC_LAST_SUCCESS,
            "Time of the last pass without errors (kept across failed passes)",
            &[],
            t.as_second() as f64,
        );
    }
    Ok(report)
}

/// Listings at once (S3 latency only; two requests each).
const LIST_CONCURRENCY: usize = 16;

/// What lists one repository: a task on S3, or the answer at once.
enum Listed {
    Now(Result<triage::Listing, String>),
    Task(tokio::task::JoinHandle<Result<triage::Listing, String>>),
}

/// The `snapshots/` and `locks/` listings of every planned repository, in order: two
/// LIST requests each, [`LIST_CONCURRENCY`] repositories at once, one S3 client per
/// set of keys and endpoint.
async fn list_all(
    planned: &[Planned],
    cfg: &GcConfig,
    requests: &Arc<AtomicU64>,
) -> Vec<Result<triage::Listing, String>> {
    let endpoint = cfg
        .restic
        .aws_endpoint_url_s3
        .as_deref()
        .or(cfg.restic.aws_endpoint_url.as_deref());
    let sem = Arc::new(Semaphore::new(LIST_CONCURRENCY));
    let mut clients: BTreeMap<String, discover::Client> = BTreeMap::new();
    let mut listed = Vec::with_capacity(planned.len());
    for p in planned {
        let settings = match Location::parse(&p.target.repository, endpoint) {
            Err(e) => {
                listed.push(Listed::Now(Err(e.to_string())));
                continue;
            }
            Ok(Location::Local(dir)) => {
                let names = |d: &str| -> Result<Vec<String>, String> {
                    Storage::Local(dir.clone())
                        .list(d)
                        .map(|v| v.into_iter().map(|(n, _)| n).collect())
                        .map_err(|e| e.to_string())
                };
                listed.push(Listed::Now(names("snapshots").and_then(|s| {
                    Ok(triage::Listing {
                        snapshots: triage::listing_hash(&s),
                        locks: names("locks")?.len(),
                    })
                })));
                continue;
            }
            Ok(Location::S3(loc)) => {
                let restic = ResticEnv {
                    aws_access_key_id: p.creds.access_key_id.clone(),
                    aws_secret_access_key: p.creds.secret_access_key.clone(),
                    aws_default_region: p
                        .creds
                        .region
                        .clone()
                        .or(cfg.restic.aws_default_region.clone()),
                    ..cfg.restic.clone()
                };
                match stowage_common::s3::S3Settings::from_env(loc, &restic, &cfg.common) {
                    Ok(s) => s,
                    Err(e) => {
                        listed.push(Listed::Now(Err(e.to_string())));
                        continue;
                    }
                }
            }
        };
        // Keyed by what the client is made of (the secret only as a hash).
        let key = format!(
            "{:?}|{}|{}|{:?}|{}|{}",
            settings.location.endpoint,
            settings.region,
            settings.path_style,
            settings.ca_bundle,
            settings.access_key_id,
            stowage_common::k8s::naming::short_hash(&[&settings.secret_access_key])
        );
        let client = match clients.get(&key) {
            Some(c) => c.clone(),
            None => match settings.client() {
                Ok(c) => {
                    clients.insert(key, c.clone());
                    c
                }
                Err(e) => {
                    listed.push(Listed::Now(Err(e.to_string())));
                    continue;
                }
            },
        };
        let (sem, requests) = (sem.clone(), requests.clone());
        listed.push(Listed::Task(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            let list = |dir: &str| {
                let prefix = settings.location.key(dir);
                let (client, settings, requests) = (&client, &settings, &requests);
                async move {
                    discover::names(client, settings, &prefix, requests)
                        .await
                        .map_err(|e| e.to_string())
                }
            };
            let snapshots = list("snapshots/").await?;
            let locks = list("locks/").await?;
            Ok(triage::Listing {
                snapshots: triage::listing_hash(&snapshots),
                locks: locks.len(),
            })
        })));
    }
    let mut out = Vec::with_capacity(listed.len());
    for l in listed {
        out.push(match l {
            Listed::Now(r) => r,
            Listed::Task(t) => t
                .await
                .unwrap_or_else(|e| Err(format!("listing failed: {e}"))),
        });
    }
    out
}

/// The per-repository metrics of a repository this pass did not open, from the state
/// its last visit left.
fn skipped_metrics(
    metrics: &mut Registry,
    st: &state::RepoState,
    identity: &str,
    labels: &[(&str, &str)],
) {
    if let Some(last) = st.last_check {
        metrics.gauge(
            names::GC_CHECK_OK,
            "1 if the last check of the repository found no error",
            &[("repository", identity)],
            if st.damaged.is_some() { 0.0 } else { 1.0 },
        );
        metrics.gauge(
            names::GC_CHECK_LAST,
            "Time of the last check of the repository",
            &[("repository", identity)],
            last.as_second() as f64,
        );
    }
    if let Some(n) = st.snapshots {
        metrics.gauge(
            names::GC_SNAPSHOTS,
            "Snapshots in the repository after this pass",
            labels,
            n as f64,
        );
    }
    if let Some(b) = st.bytes {
        metrics.gauge(
            names::GC_REPOSITORY_BYTES,
            "Size of the repository in bytes",
            labels,
            b as f64,
        );
    }
    if let Some(n) = st.retention_blocked {
        metrics.gauge(
            names::GC_RETENTION_BLOCKED,
            "Snapshots a held-back retention would forget (until confirmed)",
            labels,
            n as f64,
        );
    }
}

fn read_dirs(p: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn state_ref(cfg: &GcConfig) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("ConfigMap".into()),
        namespace: Some(cfg.gc.cluster.system_namespace.clone()),
        name: Some(cfg.gc.gc_state_configmap.clone()),
        ..Default::default()
    }
}

fn resolve_creds(t: &Target, facts: &Facts, cfg: &GcConfig) -> Result<RepoCreds, String> {
    match &t.creds {
        Creds::Derived => {
            let master = facts.master.as_deref().ok_or_else(|| {
                format!(
                    "no master password (Secret {}/{} key {})",
                    cfg.gc.cluster.system_namespace,
                    cfg.gc.cluster.credentials_secret,
                    secret_keys::MASTER_PASSWORD
                )
            })?;
            Ok(RepoCreds {
                password: derive_repository_password(master, &t.repository),
                access_key_id: facts.gc_keys.0.clone(),
                secret_access_key: facts.gc_keys.1.clone(),
                region: None,
            })
        }
        Creds::Secret { namespace, name } => {
            let s = facts
                .user_secrets
                .get(&(namespace.clone(), name.clone()))
                .ok_or_else(|| format!("Secret {namespace}/{name} is not readable"))?;
            Ok(RepoCreds {
                password: secret_value(s, run_secret_keys::RESTIC_PASSWORD).ok_or_else(|| {
                    format!(
                        "Secret {namespace}/{name} has no {}",
                        run_secret_keys::RESTIC_PASSWORD
                    )
                })?,
                access_key_id: secret_value(s, run_secret_keys::AWS_ACCESS_KEY_ID),
                secret_access_key: secret_value(s, run_secret_keys::AWS_SECRET_ACCESS_KEY),
                region: secret_value(s, run_secret_keys::AWS_DEFAULT_REGION),
            })
        }
    }
}

fn job_facts(j: &Job) -> JobFacts {
    let st = j.status.as_ref();
    let failed_at = st
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| {
            c.iter()
                .find(|c| (c.type_ == "Failed" || c.type_ == "Complete") && c.status == "True")
        })
        .and_then(|c| c.last_transition_time.as_ref().map(|t| t.0));
    JobFacts {
        namespace: j.namespace().unwrap_or_default(),
        name: j.name_any(),
        uid: j.metadata.uid.clone().unwrap_or_default(),
        finished_at: st
            .and_then(|s| s.completion_time.as_ref().map(|t| t.0))
            .or(failed_at),
        ttl_seconds: j.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished),
        pvc_uid: j.labels().get(label::PVC_UID).cloned(),
    }
}

/// Deletes finished mover Jobs past their history limit, in the background: their
/// per-run Secrets (owned by the Job) and pods go with them through Kubernetes' garbage
/// collector, so gc needs no access to other Secrets than those it reads.
pub async fn cleanup(client: &Client, cfg: &GcConfig, opts: &PassOptions, report: &mut PassReport) {
    let lp = ListParams::default().labels(&mover_job::mover_selector());
    let jobs = match Api::<Job>::all(client.clone()).list(&lp).await {
        Ok(l) => l.items,
        Err(e) => {
            report
                .errors
                .push(describe_kube_error(&e, "list jobs in all namespaces"));
            return;
        }
    };
    let jf: Vec<JobFacts> = jobs.iter().map(job_facts).collect();
    // PVCs being deleted: their finished movers' pods hold them (PVC protection).
    let releasing: BTreeSet<String> = match Api::<PersistentVolumeClaim>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(l) => l
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_some())
            .filter_map(|p| p.metadata.uid)
            .collect(),
        Err(e) => {
            report.errors.push(describe_kube_error(
                &e,
                "list persistentvolumeclaims in all namespaces",
            ));
            BTreeSet::new()
        }
    };
    for j in plan::expired_jobs(&jf, opts.now, cfg.gc.job_history_hours, &releasing) {
        let what = format!("{}/{}", j.namespace, j.name);
        if opts.dry_run {
            tracing::info!(job = %what, "would delete finished mover Job past its history limit");
        } else {
            match Api::<Job>::namespaced(client.clone(), &j.namespace)
                .delete(&j.name, &DeleteParams::background())
                .await
            {
                Ok(_) => {
                    tracing::info!(job = %what, "deleted finished mover Job past its history limit (its per-run Secret goes with it)")
                }
                Err(e) if is_status(&e, 404) => {}
                Err(e) => {
                    report
                        .errors
                        .push(describe_kube_error(&e, &format!("delete job {what}")));
                    continue;
                }
            }
        }
        report.jobs_deleted.push(what);
    }
    report.metrics.gauge(
        names::GC_JOBS_DELETED,
        "Finished mover Jobs deleted in this pass",
        &[],
        report.jobs_deleted.len() as f64,
    );
}
