//! One populator round against the API: gather facts, decide per PVC (`plan`), act.
//! Every write is idempotent (deterministic names, AlreadyExists/NotFound tolerated) or
//! guarded by a resourceVersion precondition (annotations on the user PVC, the PV's
//! claimRef move), so two runs at once or a run killed halfway converge.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, Node, ObjectReference, PersistentVolume, PersistentVolumeClaim, Secret,
};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use stowage_common::env::{PrewarmConfig, list};
use stowage_common::k8s::contract::{self, app, label, prewarm as pc, reason, secret_keys, status};
use stowage_common::k8s::credentials::{self, CentralError, RunCredentials};
use stowage_common::k8s::events::Events;
use stowage_common::k8s::job_result;
use stowage_common::k8s::mover_job::{self, MoverJobSpec, Placement, RunAs};
use stowage_common::k8s::naming::Operation;
use stowage_common::k8s::pvc::quantity_bytes;
use stowage_common::k8s::restore_kind::{Restore, RestoreSpec, names_stowage_kind};
use stowage_common::k8s::{describe_kube_error, is_status};
use stowage_common::metrics::{Registry, prewarm_names as names};

use crate::plan::{
    self, ClassFacts, JobFacts, JobState, PrimeFacts, ProbeFacts, ProbeStep, PvFacts, Step,
    UserPvc, Verdict,
};
use crate::source::{self, RepoCreds};

/// The program's name as reporter of Events and metrics job.
pub const PROGRAM: &str = "stowage-prewarm";
/// `app.kubernetes.io/component` of prime PVCs.
pub const PRIME_COMPONENT: &str = "prime";
const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// On a prime PVC: the user PVC's own Secret (`stowage.io/secret`) the restore uses.
pub const PRIME_SECRET: &str = "stowage.io/restore-secret";

/// What a run did (over all its rounds).
#[derive(Debug, Default)]
pub struct Report {
    /// `namespace/name` → what happened (`restored <id>`, `empty: no-backup`).
    pub populated: BTreeMap<String, String>,
    pub jobs_started: Vec<String>,
    /// `namespace/name` → why it waits (last round).
    pub waiting: BTreeMap<String, String>,
    pub refused: BTreeSet<String>,
    pub restore_failures: BTreeSet<String>,
    /// PVCs whose restore Job succeeded without restoring what was planned.
    pub restore_mismatches: BTreeSet<String>,
    /// PVCs whose source is another namespace's data without its grant.
    pub not_granted: BTreeSet<String>,
    /// `namespace/name` → seconds the PVC has existed, for those waiting (last round).
    pub pending_age: BTreeMap<String, f64>,
    pub source_unavailable: BTreeSet<String>,
    pub errors: BTreeSet<String>,
    pub rounds: u64,
    /// Storage class → (provisioner, safe) as the probe judged it.
    pub class_verdicts: BTreeMap<String, (String, bool)>,
}

/// Everything one round needs.
pub struct Ctx {
    pub client: Client,
    pub cfg: PrewarmConfig,
    pub events: Events,
    pub settings: plan::Settings,
    /// The end of the run: no storage lookup starts after it (a round must not keep
    /// the run past the next CronJob start). `None`: only the pass budget counts.
    pub run_deadline: Option<std::time::Instant>,
}

impl Ctx {
    pub fn new(client: Client, cfg: PrewarmConfig) -> Self {
        let p = &cfg.prewarm;
        let settings = plan::Settings {
            system_namespace: p.cluster.system_namespace.clone(),
            repository_base: p.cluster.repository_base.clone(),
            unsafe_provisioners: list(p.unsafe_provisioners.as_deref()),
            restore_backoff: SignedDuration::from_secs(p.restore_backoff_seconds as i64),
            probe_wait: SignedDuration::from_secs(p.probe_seconds as i64),
            default_endpoint: cfg
                .restic
                .aws_endpoint_url_s3
                .clone()
                .or_else(|| cfg.restic.aws_endpoint_url.clone()),
        };
        Self {
            events: Events::new(client.clone(), PROGRAM, std::env::var("POD_NAME").ok()),
            client,
            cfg,
            settings,
            run_deadline: None,
        }
    }

    fn ns(&self) -> &str {
        &self.cfg.prewarm.cluster.system_namespace
    }
}

/// The user PVC facts of a PVC that waits for the populator, if it is one.
pub fn user_pvc(p: &PersistentVolumeClaim) -> Option<UserPvc> {
    let spec = p.spec.as_ref()?;
    let r = spec.data_source_ref.as_ref()?;
    // stowage's own probe PVCs name the kind too: never populated.
    let probe = p.labels().get(app::COMPONENT).map(String::as_str) == Some(pc::probe::COMPONENT)
        && p.labels().get(app::MANAGED_BY).map(String::as_str) == Some(app::STOWAGE);
    if !names_stowage_kind(r.api_group.as_deref(), &r.kind)
        || probe
        || p.metadata.deletion_timestamp.is_some()
        || spec.volume_name.as_ref().is_some_and(|v| !v.is_empty())
        || p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
    {
        return None;
    }
    // A dataSourceRef into another namespace (CrossNamespaceVolumeDataSource) is not
    // supported: the Restore object lives with the PVC.
    if r.namespace
        .as_ref()
        .is_some_and(|n| Some(n) != p.metadata.namespace.as_ref())
    {
        return None;
    }
    let annotations = p.metadata.annotations.clone().unwrap_or_default();
    Some(UserPvc {
        namespace: p.namespace().unwrap_or_default(),
        name: p.name_any(),
        uid: p.metadata.uid.clone().unwrap_or_default(),
        resource_version: p.resource_version().unwrap_or_default(),
        restore_name: r.name.clone(),
        storage_class: spec.storage_class_name.clone(),
        size: spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .map(|q| q.0.clone()),
        access_modes: spec.access_modes.clone().unwrap_or_default(),
        volume_mode: spec.volume_mode.clone(),
        selected_node: annotations.get(SELECTED_NODE).cloned(),
        annotations,
    })
}

/// Whether a Job finished: succeeded or failed, with the time.
fn job_state(job: &Job, now: Timestamp) -> JobState {
    let conds = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    for c in &conds {
        if c.status != "True" {
            continue;
        }
        match c.type_.as_str() {
            "Complete" | "SuccessCriteriaMet" => {
                let at = c
                    .last_transition_time
                    .as_ref()
                    .or(job.status.as_ref().and_then(|s| s.completion_time.as_ref()))
                    .or(job.metadata.creation_timestamp.as_ref())
                    .map(|t| t.0)
                    .unwrap_or(now);
                return JobState::Succeeded { at };
            }
            "Failed" | "FailureTarget" => {
                // Without a transition time (older API servers, hand-written status),
                // the Job's start or creation: "now" would push the retry away forever.
                let at = c
                    .last_transition_time
                    .as_ref()
                    .or(job.status.as_ref().and_then(|s| s.start_time.as_ref()))
                    .or(job.metadata.creation_timestamp.as_ref())
                    .map(|t| t.0)
                    .unwrap_or(now);
                return JobState::Failed {
                    at,
                    why: format!(
                        "{} {}",
                        c.reason.clone().unwrap_or_default(),
                        c.message.clone().unwrap_or_default()
                    )
                    .trim()
                    .to_string(),
                };
            }
            _ => {}
        }
    }
    JobState::Running
}

fn pvc_ref(p: &UserPvc) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        name: Some(p.name.clone()),
        namespace: Some(p.namespace.clone()),
        uid: Some(p.uid.clone()),
        ..Default::default()
    }
}

/// Publishes a warning-worthy state once per change (annotation on the PVC).
async fn note(ctx: &Ctx, p: &UserPvc, reason: &str, message: &str, warning: bool) {
    let value = format!("{reason}: {message}");
    if p.annotations.get(pc::status::POPULATOR_STATUS) == Some(&value) {
        return;
    }
    if warning {
        tracing::warn!(namespace = %p.namespace, pvc = %p.name, reason, "{message}");
        ctx.events
            .warning(&pvc_ref(p), reason, "Populate", message.to_string())
            .await;
    } else {
        tracing::info!(namespace = %p.namespace, pvc = %p.name, reason, "{message}");
        ctx.events
            .normal(&pvc_ref(p), reason, "Populate", message.to_string())
            .await;
    }
    let api = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &p.namespace);
    let patch = json!({"metadata": {"annotations": {pc::status::POPULATOR_STATUS: value}}});
    if let Err(e) = api
        .patch(&p.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::warn!(
            "{}",
            describe_kube_error(&e, &format!("annotate persistentvolumeclaim {}", p.key()))
        );
    }
}

/// The central credentials Secret's values (master password, mover keys).
#[derive(Clone)]
pub(crate) struct Central {
    pub(crate) master: String,
    pub(crate) access_key_id: String,
    pub(crate) secret_access_key: String,
}

pub(crate) async fn central(ctx: &Ctx) -> Result<Central, String> {
    let c = credentials::central_secret(&ctx.client, &ctx.cfg.prewarm.cluster)
        .await
        .map_err(|e| match e {
            CentralError::NotFound { .. } => format!("{e}. The PVC stays Pending until it exists"),
            e => e.to_string(),
        })?;
    Ok(Central {
        master: c
            .require(secret_keys::MASTER_PASSWORD)
            .map_err(|e| e.to_string())?,
        // Local repositories need no keys.
        access_key_id: c
            .value(secret_keys::MOVER_ACCESS_KEY_ID)
            .unwrap_or_default(),
        secret_access_key: c
            .value(secret_keys::MOVER_SECRET_ACCESS_KEY)
            .unwrap_or_default(),
    })
}

/// Repository, password and keys of a populate: from the user PVC's own Secret
/// (`stowage.io/secret`, in its namespace; only what the mover needs is copied into the
/// per-run Secret of the stowage namespace), else the derived password of `repository`
/// and the central mover keys.
async fn repo_credentials(
    ctx: &Ctx,
    u: &UserPvc,
    own: Option<&str>,
    repository: &str,
    known_central: Option<&Result<Central, String>>,
) -> Result<RunCredentials, String> {
    let Some(name) = own else {
        let central = match known_central {
            Some(c) => c.clone()?,
            None => central(ctx).await?,
        };
        return Ok(RunCredentials {
            password: credentials::derive_repository_password(&central.master, repository),
            repository: repository.to_string(),
            access_key_id: central.access_key_id,
            secret_access_key: central.secret_access_key,
            region: region(&ctx.cfg),
            ca_bundle: credentials::load_ca_bundle(&ctx.cfg.common, &ctx.cfg.restic)?,
        });
    };
    let s = Api::<Secret>::namespaced(ctx.client.clone(), &u.namespace)
        .get_opt(name)
        .await
        .map_err(|e| describe_kube_error(&e, &format!("get secret {}/{name}", u.namespace)))?
        .ok_or_else(|| {
            format!(
                "Secret {}/{name} named by annotation {} does not exist: create it (keys \
                 RESTIC_REPOSITORY, RESTIC_PASSWORD, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) \
                 or remove the annotation. The PVC stays Pending until it exists",
                u.namespace,
                contract::user::SECRET
            )
        })?;
    let get = |k: &str| credentials::secret_value(&s, k);
    use contract::run_secret_keys as k;
    let password = get(k::RESTIC_PASSWORD).ok_or_else(|| {
        format!(
            "Secret {}/{name} (annotation {}) has no key {}",
            u.namespace,
            contract::user::SECRET,
            k::RESTIC_PASSWORD
        )
    })?;
    Ok(RunCredentials {
        repository: get(k::RESTIC_REPOSITORY).unwrap_or_else(|| repository.to_string()),
        password,
        access_key_id: get(k::AWS_ACCESS_KEY_ID).unwrap_or_default(),
        secret_access_key: get(k::AWS_SECRET_ACCESS_KEY).unwrap_or_default(),
        region: get(k::AWS_DEFAULT_REGION).or_else(|| region(&ctx.cfg)),
        ca_bundle: credentials::load_ca_bundle(&ctx.cfg.common, &ctx.cfg.restic)?,
    })
}

pub(crate) fn region(cfg: &PrewarmConfig) -> Option<String> {
    cfg.restic
        .aws_default_region
        .clone()
        .or_else(|| cfg.restic.aws_region.clone())
}

/// Runs one round. Errors that stop the round (API down, listing forbidden) are
/// returned; per-PVC problems go to the report.
pub async fn round(ctx: &Ctx, now: Timestamp, report: &mut Report) -> Result<()> {
    // The pass budget of the round's storage lookups counts from here.
    let started = std::time::Instant::now();
    report.rounds += 1;
    let all = Api::<PersistentVolumeClaim>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| {
            anyhow::anyhow!(describe_kube_error(
                &e,
                "list persistentvolumeclaims in all namespaces"
            ))
        })?;
    let users: Vec<UserPvc> = all.items.iter().filter_map(user_pvc).collect();
    let primes: Vec<&PersistentVolumeClaim> = all
        .items
        .iter()
        .filter(|p| {
            p.namespace().as_deref() == Some(ctx.ns())
                && p.labels().get(app::COMPONENT).map(String::as_str) == Some(PRIME_COMPONENT)
                && p.labels().get(app::MANAGED_BY).map(String::as_str) == Some(app::STOWAGE)
        })
        .collect();
    let probes: Vec<&PersistentVolumeClaim> = all
        .items
        .iter()
        .filter(|p| {
            p.namespace().as_deref() == Some(ctx.ns())
                && p.labels().get(app::COMPONENT).map(String::as_str) == Some(pc::probe::COMPONENT)
                && p.labels().get(app::MANAGED_BY).map(String::as_str) == Some(app::STOWAGE)
        })
        .collect();
    report.waiting.clear();
    report.pending_age.clear();
    if users.is_empty() && primes.is_empty() && probes.is_empty() {
        return Ok(());
    }
    let pvs = Api::<PersistentVolume>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| anyhow::anyhow!(describe_kube_error(&e, "list persistentvolumes")))?;
    let jobs = Api::<Job>::namespaced(ctx.client.clone(), ctx.ns())
        .list(&ListParams::default().labels(&format!(
            "{}={},{}={}",
            app::MANAGED_BY,
            app::STOWAGE,
            label::OPERATION,
            Operation::Restore.as_str()
        )))
        .await
        .map_err(|e| {
            anyhow::anyhow!(describe_kube_error(
                &e,
                &format!("list jobs in namespace {}", ctx.ns())
            ))
        })?;
    let pv_by_name: BTreeMap<String, &PersistentVolume> =
        pvs.items.iter().map(|p| (p.name_any(), p)).collect();
    let live_uids: BTreeSet<String> = all
        .items
        .iter()
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    let pending_uids: BTreeSet<&str> = users.iter().map(|u| u.uid.as_str()).collect();
    let handed_over: BTreeSet<&str> = pvs
        .items
        .iter()
        .filter_map(|pv| pv.spec.as_ref()?.claim_ref.as_ref()?.uid.as_deref())
        .collect();
    let created: BTreeMap<&str, Timestamp> = all
        .items
        .iter()
        .filter_map(|p| {
            Some((
                p.metadata.uid.as_deref()?,
                p.metadata.creation_timestamp.as_ref()?.0,
            ))
        })
        .collect();

    // Primes whose user PVC is gone or no longer waits: their work is over (handed
    // over) or abandoned (PVC deleted).
    for prime in &primes {
        let for_uid = prime
            .annotations()
            .get(pc::prime::FOR_UID)
            .cloned()
            .unwrap_or_default();
        if pending_uids.contains(for_uid.as_str()) {
            continue;
        }
        // A PV that still names the prime would be reclaimed with it: only delete once
        // the user PVC is gone or bound elsewhere.
        let abandoned = !live_uids.contains(&for_uid);
        let why = if abandoned {
            "its PVC was deleted"
        } else {
            "its PVC no longer waits for a volume"
        };
        if prime.metadata.deletion_timestamp.is_none() {
            delete_prime(ctx, &prime.name_any(), why, report).await;
        }
    }
    // Restore Jobs of PVCs that no longer wait go too (with their pods and per-run
    // Secrets): a restore still running would only keep the prime volume busy, and a
    // finished one's pod still names the prime PVC, which the PVC protection controller
    // keeps Terminating for as long as such a pod exists (the Job's
    // ttlSecondsAfterFinished).
    for j in jobs
        .items
        .iter()
        .filter(|j| j.metadata.deletion_timestamp.is_none())
    {
        let Some(for_uid) = j.labels().get(label::PVC_UID) else {
            continue;
        };
        if pending_uids.contains(for_uid.as_str()) {
            continue;
        }
        let why = if live_uids.contains(for_uid) {
            "its PVC no longer waits for a volume"
        } else {
            "its PVC was deleted"
        };
        delete_job(ctx, &j.name_any(), why, report).await;
    }

    let mut classes: BTreeMap<String, Option<ClassFacts>> = BTreeMap::new();
    let wanted: BTreeSet<String> = users
        .iter()
        .filter_map(|u| u.storage_class.clone())
        .chain(
            probes
                .iter()
                .filter_map(|p| p.annotations().get(pc::probe::FOR_CLASS).cloned()),
        )
        .collect();
    for c in wanted {
        let got = Api::<StorageClass>::all(ctx.client.clone())
            .get_opt(&c)
            .await
            .map_err(|e| {
                anyhow::anyhow!(describe_kube_error(&e, &format!("get storageclass {c}")))
            })?;
        classes.insert(
            c.clone(),
            got.map(|sc| ClassFacts {
                name: c.clone(),
                provisioner: sc.provisioner.clone(),
                wait_for_first_consumer: sc.volume_binding_mode.as_deref()
                    == Some("WaitForFirstConsumer"),
            }),
        );
    }
    let verdicts = probe_classes(ctx, now, &users, &classes, &probes, &pvs.items, report).await?;
    // Annotations of the namespaces whose data a PVC asks for (None: no such namespace).
    let mut owners: BTreeMap<String, Option<BTreeMap<String, String>>> = BTreeMap::new();
    // Storage lookups (step 1) are gathered and run after the loop, a few at once.
    let mut lookups: Vec<Lookup> = Vec::new();
    for u in &users {
        let class = u
            .storage_class
            .as_ref()
            .and_then(|c| classes.get(c).cloned().flatten());
        let verdict = class
            .as_ref()
            .and_then(|c| plan::verdict_for(c, verdicts.get(&c.name)));
        // The volume was already handed over; the binder has not caught up yet.
        if handed_over.contains(u.uid.as_str()) {
            report
                .waiting
                .insert(u.key(), "volume handed over; waiting for the binder".into());
            continue;
        }
        let prime_name = plan::prime_name(&u.uid);
        let prime = primes
            .iter()
            .find(|p| p.name_any() == prime_name)
            .map(|p| prime_facts(p, &pv_by_name));
        // The Restore object only matters until the prime PVC exists (the prime records
        // the source and snapshot): no read per waiting PVC and round after that.
        let spec = if prime.is_some() {
            RestoreSpec::default()
        } else {
            match Api::<Restore>::namespaced(ctx.client.clone(), &u.namespace)
                .get_opt(&u.restore_name)
                .await
            {
                Ok(Some(r)) => r.spec,
                // Not there (or the CRD is not installed: the API answers 404): the object
                // is optional, its defaults apply.
                Ok(None) => RestoreSpec::default(),
                // Unreadable is not absent: it may name another source, a snapshot or a
                // time, and guessing could restore the wrong data or bind empty. Wait.
                Err(e) => {
                    let e = describe_kube_error(
                        &e,
                        &format!("get restore {}/{}", u.namespace, u.restore_name),
                    );
                    report.waiting.insert(u.key(), e.clone());
                    report.errors.insert(e);
                    continue;
                }
            }
        };
        let mut my_jobs: Vec<JobFacts> = Vec::new();
        let mut unreadable = None;
        for j in jobs
            .items
            .iter()
            .filter(|j| j.labels().get(label::PVC_UID) == Some(&u.uid))
        {
            let state = job_state(j, now);
            // What a succeeded Job restored is checked against the plan (`decide`).
            let result = match &state {
                JobState::Succeeded { .. } if prime.is_some() => {
                    match job_result::fetch(&ctx.client, j).await {
                        Ok(r) => r,
                        Err(e) => {
                            unreadable = Some(e);
                            break;
                        }
                    }
                }
                _ => None,
            };
            my_jobs.push(JobFacts {
                name: j.name_any(),
                state,
                result,
            });
        }
        if let Some(e) = unreadable {
            report.waiting.insert(u.key(), e.clone());
            report.errors.insert(e);
            continue;
        }
        let step = plan::decide(
            now,
            &ctx.settings,
            u,
            class.as_ref(),
            verdict,
            &spec,
            prime.as_ref(),
            &my_jobs,
        );
        let step = match step {
            // Another namespace's data: only with its grant (read once per round).
            Step::Resolve(source) if source.owner_namespace != u.namespace => {
                let owner = source.owner_namespace.clone();
                if !owners.contains_key(&owner) {
                    match Api::<Namespace>::all(ctx.client.clone())
                        .get_opt(&owner)
                        .await
                    {
                        Ok(n) => {
                            owners.insert(
                                owner.clone(),
                                n.map(|n| n.metadata.annotations.unwrap_or_default()),
                            );
                        }
                        Err(e) => {
                            let e = describe_kube_error(&e, &format!("get namespace {owner}"));
                            report.waiting.insert(u.key(), e.clone());
                            report.errors.insert(e);
                            continue;
                        }
                    }
                }
                match plan::consent(u, &source, owners[&owner].as_ref()) {
                    Ok(()) => Step::Resolve(source),
                    Err(refused) => refused,
                }
            }
            other => other,
        };
        if let Step::Resolve(source) = step {
            lookups.push(Lookup {
                user: u,
                class,
                prime,
                source: *source,
                created: created.get(u.uid.as_str()).copied(),
            });
            continue;
        }
        if let Err(e) = act(ctx, now, u, class.as_ref(), prime.as_ref(), step, report).await {
            report.errors.insert(e);
        }
    }
    if !lookups.is_empty() {
        look_up_sources(ctx, now, started, lookups, report).await;
    }
    for u in &users {
        if report
            .waiting
            .get(&u.key())
            .is_some_and(|why| why != plan::WAITING_FOR_CONSUMER)
            && let Some(t) = created.get(u.uid.as_str())
        {
            let age = now.duration_since(*t).as_secs_f64().max(0.0);
            report.pending_age.insert(u.key(), age);
        }
    }
    Ok(())
}

/// A Pending PVC whose backup is to be looked up in this round.
struct Lookup<'a> {
    user: &'a UserPvc,
    class: Option<ClassFacts>,
    prime: Option<PrimeFacts>,
    source: plan::Source,
    created: Option<Timestamp>,
}

/// Storage lookups at once (within [`crate::OPENS`]).
pub const LOOKUP_CONCURRENCY: usize = crate::OPEN_CONCURRENCY;

/// Why a PVC waits when the round's lookups used the pass budget.
pub const LOOKUP_DEFERRED: &str = "waiting for its turn to look up its backup: this round's \
    storage lookups used the pass budget (STOWAGE_PASS_BUDGET_SECS); the next round goes \
    on, oldest PVC first";

/// Step 1 for every PVC that needs it: credentials, then the storage lookups,
/// [`LOOKUP_CONCURRENCY`] at once, oldest PVC first, none started once the round has
/// used the pass budget (those wait for the next round); then each answer's step.
async fn look_up_sources(
    ctx: &Ctx,
    now: Timestamp,
    started: std::time::Instant,
    mut lookups: Vec<Lookup<'_>>,
    report: &mut Report,
) {
    let budget = ctx.cfg.common.pass_budget();
    let keys: Vec<(Option<Timestamp>, String)> =
        lookups.iter().map(|l| (l.created, l.user.key())).collect();
    let order = plan::lookup_order(&keys);
    let mut slots: Vec<Option<Lookup<'_>>> = lookups.drain(..).map(Some).collect();
    let lookups: Vec<Lookup<'_>> = order.into_iter().filter_map(|i| slots[i].take()).collect();
    // The central Secret once for the round, not once per PVC.
    let central = if lookups.iter().any(|l| l.source.own_secret.is_none()) {
        Some(central(ctx).await)
    } else {
        None
    };
    let mut ready = Vec::new();
    for mut l in lookups {
        let u = l.user;
        match repo_credentials(
            ctx,
            u,
            l.source.own_secret.as_deref(),
            &l.source.repository,
            central.as_ref(),
        )
        .await
        {
            Ok(c) => {
                l.source.repository = c.repository.clone();
                let creds = RepoCreds {
                    password: c.password,
                    access_key_id: c.access_key_id,
                    secret_access_key: c.secret_access_key,
                    region: c.region,
                };
                ready.push((l, creds));
            }
            Err(e) => {
                note(ctx, u, reason::CREDENTIALS_MISSING, &e, true).await;
                report.waiting.insert(u.key(), e);
            }
        }
    }
    let queue: Vec<(String, RepoCreds, plan::Selector, String)> = ready
        .iter()
        .map(|(l, c)| {
            (
                l.source.repository.clone(),
                c.clone(),
                l.source.selector.clone(),
                l.user.key(),
            )
        })
        .collect();
    let answers = run_lookups(ctx, queue, started, budget, ctx.run_deadline).await;
    for ((l, _), answer) in ready.into_iter().zip(answers) {
        let u = l.user;
        let Some(answer) = answer else {
            report.waiting.insert(u.key(), LOOKUP_DEFERRED.into());
            continue;
        };
        let r = match plan::after_source(&l.source, answer) {
            Ok(decision) => create_prime(ctx, u, l.class.as_ref(), &decision).await,
            Err(wait) => {
                act(
                    ctx,
                    now,
                    u,
                    l.class.as_ref(),
                    l.prime.as_ref(),
                    wait,
                    report,
                )
                .await
            }
        };
        if let Err(e) = r {
            report.errors.insert(e);
        }
    }
}

/// Runs the lookups in their order on [`LOOKUP_CONCURRENCY`] workers; `None` for those
/// not started within the budget.
async fn run_lookups(
    ctx: &Ctx,
    queue: Vec<(String, RepoCreds, plan::Selector, String)>,
    started: std::time::Instant,
    budget: Option<std::time::Duration>,
    run_deadline: Option<std::time::Instant>,
) -> Vec<Option<plan::SourceAnswer>> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let n = queue.len();
    crate::LOOKUPS_QUEUED.fetch_add(n, Ordering::SeqCst);
    let queue = std::sync::Arc::new(queue);
    let next = std::sync::Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..LOOKUP_CONCURRENCY.min(n) {
        let (queue, next) = (queue.clone(), next.clone());
        let (restic, common) = (ctx.cfg.restic.clone(), ctx.cfg.common.clone());
        workers.push(tokio::spawn(async move {
            let mut done = Vec::new();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some((repository, creds, selector, pvc)) = queue.get(k).cloned() else {
                    break;
                };
                crate::LOOKUPS_QUEUED.fetch_sub(1, Ordering::SeqCst);
                if !stowage_common::env::may_start(started.elapsed(), budget)
                    || run_deadline.is_some_and(|d| std::time::Instant::now() >= d)
                {
                    done.push((k, None));
                    continue;
                }
                // Shared with the index: never more key derivations at once.
                let _open = crate::OPENS.acquire().await;
                tracing::info!(pvc = %pvc, repository = %repository, "looking up the backup to restore");
                let answer =
                    source::lookup(repository, creds, restic.clone(), common.clone(), selector)
                        .await;
                done.push((k, Some(answer)));
            }
            done
        }));
    }
    let mut out: Vec<Option<plan::SourceAnswer>> = (0..n).map(|_| None).collect();
    for w in workers {
        // A worker cannot panic short of a bug; its PVCs then wait for the next round.
        for (k, a) in w.await.unwrap_or_default() {
            out[k] = a;
        }
    }
    out
}

/// The probe verdicts (ConfigMap `stowage-storage-classes`), probes started, judged,
/// recorded and cleaned up for the classes of waiting PVCs (and of probes found).
async fn probe_classes(
    ctx: &Ctx,
    now: Timestamp,
    users: &[UserPvc],
    classes: &BTreeMap<String, Option<ClassFacts>>,
    probes: &[&PersistentVolumeClaim],
    pvs: &[PersistentVolume],
    report: &mut Report,
) -> Result<BTreeMap<String, Verdict>> {
    let cms = Api::<ConfigMap>::namespaced(ctx.client.clone(), ctx.ns());
    let mut verdicts: BTreeMap<String, Verdict> = BTreeMap::new();
    if !classes.is_empty() {
        let cm = cms.get_opt(pc::probe::CONFIGMAP).await.map_err(|e| {
            anyhow::anyhow!(describe_kube_error(
                &e,
                &format!("get configmap {}/{}", ctx.ns(), pc::probe::CONFIGMAP)
            ))
        })?;
        for (k, v) in cm.and_then(|c| c.data).unwrap_or_default() {
            match serde_json::from_str::<Verdict>(&v) {
                Ok(v) => {
                    verdicts.insert(k, v);
                }
                Err(e) => {
                    tracing::warn!(class = %k, "unreadable probe verdict ({e}): probed again")
                }
            }
        }
    }
    for (name, class) in classes {
        let probe_name = plan::probe_name(name);
        let probe = probes.iter().find(|p| p.name_any() == probe_name);
        let facts = probe.map(|p| {
            let uid = p.metadata.uid.clone().unwrap_or_default();
            let pv = p
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.clone())
                .filter(|v| !v.is_empty())
                .or_else(|| {
                    pvs.iter()
                        .find(|pv| {
                            pv.spec
                                .as_ref()
                                .and_then(|s| s.claim_ref.as_ref())
                                .is_some_and(|c| {
                                    c.uid.as_deref() == Some(uid.as_str())
                                        || (c.namespace.as_deref() == Some(ctx.ns())
                                            && c.name.as_deref() == Some(probe_name.as_str()))
                                })
                        })
                        .map(|pv| pv.name_any())
                });
            ProbeFacts {
                name: probe_name.clone(),
                started: p
                    .annotations()
                    .get(pc::probe::STARTED_AT)
                    .and_then(|t| t.parse().ok())
                    .or(p.metadata.creation_timestamp.as_ref().map(|t| t.0)),
                pv,
                terminating: p.metadata.deletion_timestamp.is_some(),
            }
        });
        let Some(class) = class else {
            // The class is gone: its probe has nothing to judge.
            if let Some(f) = &facts {
                delete_probe(ctx, f, pvs, report).await;
            }
            continue;
        };
        if let Some(v) = plan::verdict_for(class, verdicts.get(name)) {
            report
                .class_verdicts
                .insert(name.clone(), (class.provisioner.clone(), v.safe()));
            // Judged (by this run or an earlier one killed before its cleanup).
            if let Some(f) = facts.as_ref().filter(|f| !f.terminating || f.pv.is_some()) {
                delete_probe(ctx, f, pvs, report).await;
            }
            continue;
        }
        match plan::probe_step(now, &ctx.settings, class, facts.as_ref()) {
            ProbeStep::Create => {
                if let Err(e) = create_probe(ctx, now, class, users).await {
                    report.errors.insert(e);
                }
            }
            ProbeStep::Wait(why) => tracing::debug!(class = %name, "{why}"),
            ProbeStep::Judge(v) => {
                let value = serde_json::to_string(&v).unwrap_or_default();
                let patch = json!({"data": {name.as_str(): value}});
                let stored = match cms
                    .patch(
                        pc::probe::CONFIGMAP,
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(e) if is_status(&e, 404) => {
                        let cm: ConfigMap = serde_json::from_value(json!({
                            "metadata": {"name": pc::probe::CONFIGMAP, "namespace": ctx.ns(),
                                         "labels": {app::MANAGED_BY: app::STOWAGE,
                                                    app::PART_OF: app::STOWAGE}},
                            "data": {name.as_str(): value},
                        }))
                        .expect("a ConfigMap");
                        match cms.create(&PostParams::default(), &cm).await {
                            Ok(_) => Ok(()),
                            // Created by another run meanwhile (two runs judged the
                            // first class at once): it exists now, so patch it.
                            Err(e) if is_status(&e, 409) => cms
                                .patch(
                                    pc::probe::CONFIGMAP,
                                    &PatchParams::default(),
                                    &Patch::Merge(&patch),
                                )
                                .await
                                .map(|_| ()),
                            Err(e) => Err(e),
                        }
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = stored {
                    report.errors.insert(describe_kube_error(
                        &e,
                        &format!(
                            "record verdict in configmap {}/{}",
                            ctx.ns(),
                            pc::probe::CONFIGMAP
                        ),
                    ));
                    continue;
                }
                let level_safe = v.safe();
                if level_safe {
                    tracing::info!(class = %name, provisioner = %class.provisioner, "storage class is safe for populating: {}", v.detail);
                } else {
                    tracing::warn!(class = %name, provisioner = %class.provisioner, "storage class is unsafe for populating: {}", v.detail);
                }
                report
                    .class_verdicts
                    .insert(name.clone(), (class.provisioner.clone(), level_safe));
                if let Some(f) = &facts {
                    delete_probe(ctx, f, pvs, report).await;
                }
                verdicts.insert(name.clone(), v);
            }
        }
    }
    sweep_probe_volumes(ctx, probes, pvs, report).await;
    Ok(verdicts)
}

/// Volumes provisioned for probe PVCs that are gone (a run killed after deleting the
/// probe, or a provisioner that did not reclaim it): deleted.
async fn sweep_probe_volumes(
    ctx: &Ctx,
    probes: &[&PersistentVolumeClaim],
    pvs: &[PersistentVolume],
    report: &mut Report,
) {
    let live: BTreeSet<&str> = probes
        .iter()
        .filter_map(|p| p.metadata.uid.as_deref())
        .collect();
    for pv in pvs {
        let Some(c) = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
            continue;
        };
        if c.namespace.as_deref() != Some(ctx.ns())
            || !c
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with(pc::probe::NAME_PREFIX))
            || c.uid.as_deref().is_some_and(|u| live.contains(u))
            || pv.metadata.deletion_timestamp.is_some()
            || reclaimed_by_provisioner(pv)
        {
            continue;
        }
        let name = pv.name_any();
        match Api::<PersistentVolume>::all(ctx.client.clone())
            .delete(&name, &DeleteParams::background())
            .await
        {
            Ok(_) => tracing::info!(pv = %name, "volume of a deleted probe PVC deleted"),
            Err(e) if is_status(&e, 404) => {}
            Err(e) => {
                report.errors.insert(describe_kube_error(
                    &e,
                    &format!("delete persistentvolume {name}"),
                ));
            }
        }
    }
}

/// Creates the probe PVC of a class: a small PVC whose dataSourceRef names a Restore
/// object that is never populated. WaitForFirstConsumer classes provision only for a
/// selected node: the node of a waiting PVC of the class, or a Ready node.
async fn create_probe(
    ctx: &Ctx,
    now: Timestamp,
    class: &ClassFacts,
    users: &[UserPvc],
) -> Result<(), String> {
    let name = plan::probe_name(&class.name);
    let mut annotations = BTreeMap::from([
        (pc::probe::FOR_CLASS.to_string(), class.name.clone()),
        (pc::probe::STARTED_AT.to_string(), now.to_string()),
    ]);
    if class.wait_for_first_consumer {
        let node = match users
            .iter()
            .filter(|u| u.storage_class.as_deref() == Some(class.name.as_str()))
            .find_map(|u| u.selected_node.clone())
        {
            Some(n) => Some(n),
            None => {
                let nodes = Api::<Node>::all(ctx.client.clone())
                    .list(&ListParams::default())
                    .await
                    .map_err(|e| describe_kube_error(&e, "list nodes"))?;
                let ready = |n: &&Node| {
                    !n.spec
                        .as_ref()
                        .and_then(|s| s.unschedulable)
                        .unwrap_or(false)
                        && n.status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_none_or(|c| {
                                c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                                    || c.iter().all(|c| c.type_ != "Ready")
                            })
                };
                nodes.items.iter().find(ready).map(|n| n.name_any())
            }
        };
        let Some(node) = node else {
            return Err(format!(
                "cannot probe WaitForFirstConsumer storage class {}: no Ready node",
                class.name
            ));
        };
        annotations.insert(SELECTED_NODE.into(), node);
    }
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ctx.ns(), "annotations": annotations, "labels": {
            app::MANAGED_BY: app::STOWAGE, app::PART_OF: app::STOWAGE,
            app::NAME: PROGRAM, app::COMPONENT: pc::probe::COMPONENT,
        }},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": class.name,
            "resources": {"requests": {"storage": "1Mi"}},
            // Never populated: only a provisioner that ignores populators binds it.
            "dataSourceRef": {"apiGroup": "stowage.io", "kind": "Restore", "name": name},
        },
    }))
    .map_err(|e| format!("cannot build the probe PVC of class {}: {e}", class.name))?;
    match Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), ctx.ns())
        .create(&PostParams::default(), &pvc)
        .await
    {
        Ok(_) => {
            tracing::info!(class = %class.name, provisioner = %class.provisioner, probe = %name,
                "probing storage class: does it leave a PVC with a dataSourceRef to its populator?");
            Ok(())
        }
        Err(e) if is_status(&e, 409) => Ok(()),
        Err(e) => Err(describe_kube_error(
            &e,
            &format!("create persistentvolumeclaim {}/{name}", ctx.ns()),
        )),
    }
}

/// Whether a PV is left to its provisioner to delete (reclaim policy Delete, not
/// Failed): deleting the object first could leak the storage behind it.
fn reclaimed_by_provisioner(pv: &PersistentVolume) -> bool {
    pv.spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        == Some("Delete")
        && pv.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Failed")
}

/// Deletes a probe PVC and the PV provisioned for it: at once when its reclaim policy
/// keeps it (Retain), else the provisioner deletes it with its storage once the claim
/// is gone (and [`sweep_probe_volumes`] deletes it if it fails to).
async fn delete_probe(
    ctx: &Ctx,
    probe: &ProbeFacts,
    pvs: &[PersistentVolume],
    report: &mut Report,
) {
    if !probe.terminating {
        match Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), ctx.ns())
            .delete(&probe.name, &DeleteParams::background())
            .await
        {
            Ok(_) => tracing::info!(probe = %probe.name, "probe PVC deleted"),
            Err(e) if is_status(&e, 404) => {}
            Err(e) => {
                report.errors.insert(describe_kube_error(
                    &e,
                    &format!("delete persistentvolumeclaim {}/{}", ctx.ns(), probe.name),
                ));
            }
        }
    }
    if let Some(pv) = &probe.pv
        && !pvs
            .iter()
            .any(|x| x.name_any() == *pv && reclaimed_by_provisioner(x))
    {
        match Api::<PersistentVolume>::all(ctx.client.clone())
            .delete(pv, &DeleteParams::background())
            .await
        {
            Ok(_) => tracing::info!(pv = %pv, "volume of the probe PVC deleted"),
            Err(e) if is_status(&e, 404) => {}
            Err(e) => {
                report.errors.insert(describe_kube_error(
                    &e,
                    &format!("delete persistentvolume {pv}"),
                ));
            }
        }
    }
}

fn prime_facts(p: &PersistentVolumeClaim, pvs: &BTreeMap<String, &PersistentVolume>) -> PrimeFacts {
    let a = p.annotations();
    let bound = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    let pv = p
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_ref())
        .filter(|_| bound)
        .and_then(|n| pvs.get(n))
        .map(|pv| PvFacts {
            name: pv.name_any(),
            resource_version: pv.resource_version().unwrap_or_default(),
            node_affinity: pv
                .spec
                .as_ref()
                .and_then(|s| s.node_affinity.as_ref())
                .and_then(|a| a.required.clone()),
        });
    PrimeFacts {
        name: p.name_any(),
        pv,
        repository: a.get(pc::prime::REPOSITORY).cloned().unwrap_or_default(),
        snapshot: a
            .get(pc::prime::SNAPSHOT)
            .filter(|s| !s.is_empty())
            .cloned(),
        snapshot_time: a.get(pc::prime::SNAPSHOT_TIME).cloned(),
        empty_reason: a.get(pc::prime::EMPTY_REASON).cloned(),
        terminating: p.metadata.deletion_timestamp.is_some(),
        secret: a.get(PRIME_SECRET).filter(|s| !s.is_empty()).cloned(),
    }
}

async fn delete_prime(ctx: &Ctx, name: &str, why: &str, report: &mut Report) {
    match Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), ctx.ns())
        .delete(name, &DeleteParams::background())
        .await
    {
        Ok(_) => tracing::info!(prime = %name, "prime PVC deleted: {why}"),
        Err(e) if is_status(&e, 404) => {}
        Err(e) => {
            report.errors.insert(describe_kube_error(
                &e,
                &format!("delete persistentvolumeclaim {}/{name}", ctx.ns()),
            ));
        }
    }
}

async fn delete_job(ctx: &Ctx, name: &str, why: &str, report: &mut Report) {
    match Api::<Job>::namespaced(ctx.client.clone(), ctx.ns())
        .delete(name, &DeleteParams::background())
        .await
    {
        Ok(_) => tracing::info!(job = %name, "restore Job deleted: {why}"),
        Err(e) if is_status(&e, 404) => {}
        Err(e) => {
            report.errors.insert(describe_kube_error(
                &e,
                &format!("delete job {}/{name}", ctx.ns()),
            ));
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn act(
    ctx: &Ctx,
    now: Timestamp,
    u: &UserPvc,
    class: Option<&ClassFacts>,
    prime: Option<&PrimeFacts>,
    step: Step,
    report: &mut Report,
) -> Result<(), String> {
    match step {
        Step::Wait { why, note: n } => {
            tracing::debug!(namespace = %u.namespace, pvc = %u.name, "waiting: {why}");
            if let Some((r, m)) = &n {
                if *r == pc::reason::RESTORE_FAILED || *r == pc::reason::RESTORE_MISMATCH {
                    report.restore_failures.insert(u.key());
                }
                if *r == pc::reason::RESTORE_MISMATCH {
                    report.restore_mismatches.insert(u.key());
                }
                if *r == pc::reason::RESTORE_NOT_GRANTED {
                    report.not_granted.insert(u.key());
                }
                if *r == pc::reason::SOURCE_UNAVAILABLE {
                    report.source_unavailable.insert(u.key());
                }
                note(ctx, u, r, m, *r != pc::reason::PROBING_STORAGE_CLASS).await;
            }
            report.waiting.insert(u.key(), why);
            Ok(())
        }
        Step::Refuse { message } => {
            report.refused.insert(format!(
                "{}|{}",
                u.key(),
                class.map(|c| c.name.as_str()).unwrap_or("")
            ));
            note(ctx, u, pc::reason::UNSAFE_STORAGE_CLASS, &message, true).await;
            Ok(())
        }
        Step::Resolve(mut src) => {
            let creds =
                match repo_credentials(ctx, u, src.own_secret.as_deref(), &src.repository, None)
                    .await
                {
                    Ok(c) => c,
                    Err(e) => {
                        note(ctx, u, reason::CREDENTIALS_MISSING, &e, true).await;
                        report.waiting.insert(u.key(), e);
                        return Ok(());
                    }
                };
            src.repository = creds.repository.clone();
            tracing::info!(namespace = %u.namespace, pvc = %u.name, repository = %src.repository, "looking up the backup to restore");
            let creds = RepoCreds {
                password: creds.password,
                access_key_id: creds.access_key_id,
                secret_access_key: creds.secret_access_key,
                region: creds.region,
            };
            let answer = source::lookup(
                src.repository.clone(),
                creds,
                ctx.cfg.restic.clone(),
                ctx.cfg.common.clone(),
                src.selector.clone(),
            )
            .await;
            match plan::after_source(&src, answer) {
                Ok(decision) => create_prime(ctx, u, class, &decision).await,
                Err(wait) => Box::pin(act(ctx, now, u, class, prime, wait, report)).await,
            }
        }
        Step::CreatePrime(decision) => create_prime(ctx, u, class, &decision).await,
        Step::StartJob {
            name,
            attempt,
            snapshot,
        } => {
            let prime = prime.expect("a Job is only started for a prime PVC");
            start_job(ctx, u, prime, &name, attempt, &snapshot, report).await
        }
        // `decide` hands a restored volume over only when its Job's mover result matched
        // the plan (plan::verify_restore).
        Step::HandOver { pv, .. } => {
            let prime = prime.expect("hand-over needs a prime PVC");
            hand_over(ctx, now, u, prime, &pv, report).await
        }
    }
}

async fn create_prime(
    ctx: &Ctx,
    u: &UserPvc,
    class: Option<&ClassFacts>,
    d: &plan::PrimeDecision,
) -> Result<(), String> {
    let name = plan::prime_name(&u.uid);
    let mut annotations = BTreeMap::from([
        (pc::prime::FOR_PVC.to_string(), u.key()),
        (pc::prime::FOR_UID.to_string(), u.uid.clone()),
        (pc::prime::REPOSITORY.to_string(), d.repository.clone()),
        (
            pc::prime::SNAPSHOT.to_string(),
            d.snapshot.as_ref().map(|s| s.0.clone()).unwrap_or_default(),
        ),
    ]);
    if let Some((_, t)) = &d.snapshot {
        annotations.insert(pc::prime::SNAPSHOT_TIME.into(), t.to_string());
    }
    if let Some(r) = d.empty_reason {
        annotations.insert(pc::prime::EMPTY_REASON.into(), r.into());
    }
    if let Some(sec) = &d.secret {
        annotations.insert(PRIME_SECRET.into(), sec.clone());
    }
    if class.is_some_and(|c| c.wait_for_first_consumer)
        && let Some(n) = &u.selected_node
    {
        annotations.insert(SELECTED_NODE.into(), n.clone());
    }
    let labels = BTreeMap::from([
        (app::MANAGED_BY.to_string(), app::STOWAGE.to_string()),
        (app::PART_OF.to_string(), app::STOWAGE.to_string()),
        (app::NAME.to_string(), PROGRAM.to_string()),
        (app::COMPONENT.to_string(), PRIME_COMPONENT.to_string()),
        (label::PVC_UID.to_string(), u.uid.clone()),
    ]);
    let mut spec = json!({
        "accessModes": u.access_modes,
        "storageClassName": u.storage_class,
        "resources": {"requests": {"storage": u.size}},
    });
    if let Some(m) = &u.volume_mode {
        spec["volumeMode"] = json!(m);
    }
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ctx.ns(), "labels": labels, "annotations": annotations},
        "spec": spec,
    }))
    .map_err(|e| format!("cannot build the prime PVC for {}: {e}", u.key()))?;
    match Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), ctx.ns())
        .create(&PostParams::default(), &pvc)
        .await
    {
        Ok(_) => {
            tracing::info!(
                namespace = %u.namespace, pvc = %u.name, prime = %name,
                snapshot = d.snapshot.as_ref().map(|s| s.0.as_str()).unwrap_or(""),
                empty = d.empty_reason.unwrap_or(""),
                "prime PVC created"
            );
            Ok(())
        }
        Err(e) if is_status(&e, 409) => Ok(()),
        Err(e) => Err(describe_kube_error(
            &e,
            &format!("create persistentvolumeclaim {}/{name}", ctx.ns()),
        )),
    }
}

async fn start_job(
    ctx: &Ctx,
    u: &UserPvc,
    prime: &PrimeFacts,
    name: &str,
    attempt: u32,
    snapshot: &str,
    report: &mut Report,
) -> Result<(), String> {
    // Restores follow the PVC's annotation only: prewarm reads no backup policies.
    let deadline = match mover_job::deadline(
        u.size.as_deref().map(quantity_bytes).unwrap_or_default(),
        None,
        u.annotations
            .get(contract::user::MOVER_DEADLINE)
            .map(String::as_str),
    ) {
        Ok(d) => d,
        Err(e) => {
            note(ctx, u, reason::INVALID_MOVER_DEADLINE, &e, true).await;
            report.waiting.insert(u.key(), e);
            return Ok(());
        }
    };
    let creds =
        match repo_credentials(ctx, u, prime.secret.as_deref(), &prime.repository, None).await {
            Ok(c) => c,
            Err(e) => {
                note(ctx, u, reason::CREDENTIALS_MISSING, &e, true).await;
                report.waiting.insert(u.key(), e);
                return Ok(());
            }
        };
    let ns = ctx.ns().to_string();
    let mut spec = MoverJobSpec::new(
        Operation::Restore,
        name,
        &ns,
        &prime.name,
        &u.uid,
        &ctx.cfg.prewarm.mover_image,
        name,
    );
    spec.run_as = RunAs::Privileged;
    spec.placement = match prime.pv.as_ref().and_then(|p| p.node_affinity.clone()) {
        Some(sel) => Placement::Affinity(sel),
        None => Placement::Anywhere,
    };
    // The prime volume is stowage's own: a retry (of the Job's pod or of the Job)
    // replaces whatever a killed attempt left.
    spec.args = vec!["--snapshot".into(), snapshot.into(), "--replace".into()];
    spec.env = mover_job::mover_env(&ctx.cfg.restic, &ctx.cfg.common, None);
    spec.active_deadline_seconds = deadline;
    spec.ca_from_secret = creds.ca_bundle.is_some();
    spec.annotations.insert(pc::prime::FOR_PVC.into(), u.key());
    let job = mover_job::mover_job(&spec);
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
    credentials::create_run_secret(&ctx.client, &job, Operation::Restore, &u.uid, &creds).await?;
    if fresh {
        report.jobs_started.push(format!("{ns}/{name}"));
        let msg = format!(
            "restoring snapshot {} of {} into a new volume (Job {ns}/{name}, attempt {}); the \
             PVC binds when the restore has completed",
            short(snapshot),
            prime.repository,
            attempt + 1
        );
        tracing::info!(namespace = %u.namespace, pvc = %u.name, job = %name, "{msg}");
        ctx.events
            .normal(&pvc_ref(u), pc::reason::RESTORE_STARTED, "Populate", msg)
            .await;
    }
    Ok(())
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// Step 4: record on the user PVC what it gets, move the PV to it, delete the prime.
async fn hand_over(
    ctx: &Ctx,
    now: Timestamp,
    u: &UserPvc,
    prime: &PrimeFacts,
    pv: &PvFacts,
    report: &mut Report,
) -> Result<(), String> {
    // a. The record first: the PVC is still Pending (no backup can run), and once the
    //    volume is its own the scheduler's first-backup guard needs it.
    let mut ann = serde_json::Map::new();
    ann.insert(pc::status::RESTORED_FROM.into(), json!(prime.repository));
    ann.insert(pc::status::RESTORED_AT.into(), json!(now.to_string()));
    ann.insert(pc::status::POPULATOR_STATUS.into(), serde_json::Value::Null);
    match &prime.snapshot {
        Some(id) => {
            ann.insert(status::POPULATED_FROM.into(), json!(id));
            ann.insert(
                pc::status::RESTORED_SNAPSHOT_TIME.into(),
                json!(prime.snapshot_time),
            );
            ann.insert(pc::status::BOUND_EMPTY.into(), serde_json::Value::Null);
        }
        None => {
            ann.insert(
                pc::status::BOUND_EMPTY.into(),
                json!(prime.empty_reason.as_deref().unwrap_or(pc::EMPTY_NO_BACKUP)),
            );
        }
    }
    let already = prime
        .snapshot
        .as_ref()
        .is_none_or(|id| u.annotations.get(status::POPULATED_FROM) == Some(id))
        && u.annotations.contains_key(pc::status::RESTORED_AT);
    if !already {
        let patch =
            json!({"metadata": {"resourceVersion": u.resource_version, "annotations": ann}});
        match Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &u.namespace)
            .patch(&u.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            // Changed since this round read it (provisioner annotations, a second run):
            // the next round reads it again.
            Err(e) if is_status(&e, 409) => {
                report
                    .waiting
                    .insert(u.key(), "PVC changed while handing over; next round".into());
                return Ok(());
            }
            Err(e) => {
                return Err(describe_kube_error(
                    &e,
                    &format!("annotate persistentvolumeclaim {}", u.key()),
                ));
            }
        }
    }
    // b. The PV follows, only if nobody changed it since it was read.
    let claim = json!({
        "metadata": {"resourceVersion": pv.resource_version},
        "spec": {"claimRef": {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "namespace": u.namespace, "name": u.name, "uid": u.uid,
            "resourceVersion": null
        }}
    });
    match Api::<PersistentVolume>::all(ctx.client.clone())
        .patch(&pv.name, &PatchParams::default(), &Patch::Merge(&claim))
        .await
    {
        Ok(_) => {}
        Err(e) if is_status(&e, 409) => {
            report
                .waiting
                .insert(u.key(), "PV changed while handing over; next round".into());
            return Ok(());
        }
        Err(e) => {
            return Err(describe_kube_error(
                &e,
                &format!("move persistentvolume {} to claim {}", pv.name, u.key()),
            ));
        }
    }
    // c. The prime PVC no longer owns the PV: deleting it leaves the volume alone. Its
    //    restore Job goes with it: the finished pod names the prime PVC, which the
    //    PVC protection controller keeps Terminating while such a pod exists.
    delete_prime(ctx, &prime.name, "volume handed over", report).await;
    let selector = format!("{}={}", label::PVC_UID, u.uid);
    match Api::<Job>::namespaced(ctx.client.clone(), ctx.ns())
        .list(&ListParams::default().labels(&selector))
        .await
    {
        Ok(jobs) => {
            for j in jobs.items {
                delete_job(ctx, &j.name_any(), "volume handed over", report).await;
            }
        }
        // The next round with the prime still Terminating deletes them.
        Err(e) => {
            report.errors.insert(describe_kube_error(
                &e,
                &format!("list jobs {} -l {selector}", ctx.ns()),
            ));
        }
    }
    let (reason, msg, what) = match &prime.snapshot {
        Some(id) => (
            pc::reason::RESTORED,
            format!(
                "restored snapshot {} (taken {}) of {}; volume {} bound",
                short(id),
                prime.snapshot_time.as_deref().unwrap_or("?"),
                prime.repository,
                pv.name
            ),
            format!("restored {id}"),
        ),
        None => {
            let why = prime.empty_reason.as_deref().unwrap_or(pc::EMPTY_NO_BACKUP);
            (
                pc::reason::BOUND_EMPTY,
                if why == pc::EMPTY_FORCED {
                    format!(
                        "bound empty as asked by annotation {}; volume {}",
                        contract::user::FORCE_EMPTY,
                        pv.name
                    )
                } else {
                    format!(
                        "no backup in {} (the storage answered: no repository or no \
                         snapshot): a fresh install, bound empty; volume {}",
                        prime.repository, pv.name
                    )
                },
                format!("empty: {why}"),
            )
        }
    };
    tracing::info!(namespace = %u.namespace, pvc = %u.name, "{msg}");
    ctx.events
        .normal(&pvc_ref(u), reason, "Populate", msg.clone())
        .await;
    report.populated.insert(u.key(), what);
    // The Restore object's status (informational, best effort).
    let status = json!({"status": {
        "lastPvc": u.key(),
        "lastSnapshot": prime.snapshot.clone().unwrap_or_default(),
        "lastTime": now.to_string(),
        "message": msg,
    }});
    let _ = Api::<Restore>::namespaced(ctx.client.clone(), &u.namespace)
        .patch_status(
            &u.restore_name,
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await;
    Ok(())
}

/// Metrics of a run.
pub fn metrics(report: &Report, registry: &mut Registry) {
    registry.gauge(
        names::PENDING,
        "PVCs waiting for the populator at the end of the run",
        &[],
        report.waiting.len() as f64,
    );
    for what in report.populated.values() {
        let result = if what.starts_with("restored") {
            "restored"
        } else {
            "empty"
        };
        registry.add(
            names::POPULATED,
            "PVCs populated in this run, by result",
            &[("result", result)],
            1.0,
        );
    }
    for key in &report.restore_failures {
        let (ns, pvc) = key.split_once('/').unwrap_or(("", key));
        registry.gauge(
            names::RESTORE_FAILURES,
            "1 for each PVC whose restore failed and waits for a retry",
            &[("namespace", ns), ("persistentvolumeclaim", pvc)],
            1.0,
        );
    }
    for key in &report.restore_mismatches {
        let (ns, pvc) = key.split_once('/').unwrap_or(("", key));
        registry.gauge(
            names::RESTORE_MISMATCHES,
            "1 for each PVC whose restore Job succeeded without restoring the planned snapshot \
             of the planned repository (not bound, retried)",
            &[("namespace", ns), ("persistentvolumeclaim", pvc)],
            1.0,
        );
    }
    for key in &report.not_granted {
        let (ns, pvc) = key.split_once('/').unwrap_or(("", key));
        registry.gauge(
            names::NOT_GRANTED,
            "1 for each PVC whose restore source is another namespace's data without its grant",
            &[("namespace", ns), ("persistentvolumeclaim", pvc)],
            1.0,
        );
    }
    for (key, age) in &report.pending_age {
        let (ns, pvc) = key.split_once('/').unwrap_or(("", key));
        registry.gauge(
            names::PENDING_SECONDS,
            "Seconds since creation of each PVC still waiting for the populator at the end of \
             the run",
            &[("namespace", ns), ("persistentvolumeclaim", pvc)],
            *age,
        );
    }
    for key in &report.source_unavailable {
        let (ns, pvc) = key.split_once('/').unwrap_or(("", key));
        registry.gauge(
            names::SOURCE_UNAVAILABLE,
            "1 for each PVC whose backup source could not be read (retried)",
            &[("namespace", ns), ("persistentvolumeclaim", pvc)],
            1.0,
        );
    }
    for r in &report.refused {
        let (key, class) = r.split_once('|').unwrap_or((r, ""));
        let (ns, pvc) = key.split_once('/').unwrap_or(("", key));
        registry.gauge(
            names::UNSAFE_CLASS,
            "1 for each PVC refused because its storage class ignores volume populators",
            &[
                ("namespace", ns),
                ("persistentvolumeclaim", pvc),
                ("storageclass", class),
            ],
            1.0,
        );
    }
    for (class, (provisioner, safe)) in &report.class_verdicts {
        registry.gauge(
            names::CLASS_SAFE,
            "Probe verdict per storage class: 1 safe for populating, 0 unsafe (PVCs refused)",
            &[("storageclass", class), ("provisioner", provisioner)],
            if *safe { 1.0 } else { 0.0 },
        );
    }
    registry.gauge(
        names::ERRORS,
        "Errors in this run",
        &[],
        report.errors.len() as f64,
    );
}
