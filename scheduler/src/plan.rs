//! The decisions of one pass, as pure functions over plain data: which PVCs opted in,
//! which are due, which are skipped and why, which Jobs start within the concurrency
//! limit, and how each mover runs (node, user, resources). No I/O here.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{NodeSelector, Toleration};
use stowage_common::k8s::contract::{self, consistency, user};
use stowage_common::k8s::copy::CopyMethod;
use stowage_common::k8s::grant;
use stowage_common::k8s::hooks::{self, Hook, Phase};
use stowage_common::k8s::mover_job::{self, Placement, RunAs};
use stowage_common::k8s::naming::{self, Operation};
use stowage_common::k8s::policy::{Policies, PolicyProblem};
pub use stowage_common::k8s::pvc::{parse_user, policy_of};
use stowage_common::location::Location;
use stowage_common::schedule::{self, Due, RunHistory, Schedule};

/// What the pass knows about one PVC (gathered from the API by `facts`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PvcFacts {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub bound: bool,
    pub terminating: bool,
    pub block_mode: bool,
    pub access_modes: Vec<String>,
    pub capacity_bytes: u64,
    /// Node affinity of the bound PV (node-local volumes).
    pub pv_node_affinity: Option<NodeSelector>,
    /// Pods (not stowage's) that mount this PVC and have not finished.
    pub consumers: Vec<Consumer>,
    /// The PVC refers to the stowage kind and is waiting for prewarm.
    pub populating: bool,
    /// Stowage manages it (a prime PVC of a restore): never backed up.
    pub managed_by_stowage: bool,
    /// `spec.storageClassName`.
    pub storage_class: Option<String>,
    /// Capacity as a quantity (status, else the request), e.g. `10Gi`.
    pub capacity: Option<String>,
}

/// A pod using a PVC.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Consumer {
    pub name: String,
    pub node: Option<String>,
    pub running: bool,
    pub uid: Option<i64>,
    pub gid: Option<i64>,
    pub fs_group: Option<i64>,
    pub tolerations: Vec<Toleration>,
    /// The pod's annotations (Velero hook annotations).
    pub annotations: BTreeMap<String, String>,
    /// Names of the pod's containers, in order.
    pub containers: Vec<String>,
}

/// What the pass knows about one namespace.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NamespaceFacts {
    pub labels: BTreeMap<String, String>,
    /// The Namespace's annotations (the repository grant).
    pub annotations: BTreeMap<String, String>,
    pub terminating: bool,
}

/// A mover Job that has not finished.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveJob {
    pub namespace: String,
    pub name: String,
    pub pvc_uid: String,
}

/// Settings of the pass.
#[derive(Debug, Clone, PartialEq)]
pub struct PassSettings {
    pub backup_label: String,
    pub max_concurrent_jobs: usize,
    pub include_namespaces: Vec<String>,
    pub exclude_namespaces: Vec<String>,
    /// VolumeSnapshotClass when a PVC names none (None: the cluster's default).
    pub default_snapshot_class: Option<String>,
    /// `STOWAGE_REPOSITORY_BASE`: repositories are `<base>/<namespace>/<pvc>`.
    pub repository_base: Option<String>,
}

/// Why a PVC is not backed up in this pass.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum SkipReason {
    NotDue,
    Unbound,
    Terminating,
    NamespaceTerminating,
    JobRunning,
    Populating,
    UnknownPolicy,
    InvalidPolicy,
    BlockMode,
    VolumeInUse,
    NoMoverUser,
    InvalidCopyMethod,
    InvalidHook,
    InvalidDeadline,
    RepositoryNotGranted,
    RepositoryRefused,
    StorageUnreachable,
    ConcurrencyLimit,
}

impl SkipReason {
    /// Metric label and annotation value.
    pub fn as_str(&self) -> &'static str {
        match self {
            SkipReason::NotDue => "not_due",
            SkipReason::Unbound => "unbound",
            SkipReason::Terminating => "terminating",
            SkipReason::NamespaceTerminating => "namespace_terminating",
            SkipReason::JobRunning => "job_running",
            SkipReason::Populating => "populating",
            SkipReason::UnknownPolicy => "unknown_policy",
            SkipReason::InvalidPolicy => "invalid_policy",
            SkipReason::BlockMode => "block_mode",
            SkipReason::VolumeInUse => "volume_in_use",
            SkipReason::NoMoverUser => "no_mover_user",
            SkipReason::InvalidCopyMethod => "invalid_copy_method",
            SkipReason::InvalidHook => "invalid_hook",
            SkipReason::InvalidDeadline => "invalid_deadline",
            SkipReason::RepositoryNotGranted => "repository_not_granted",
            SkipReason::RepositoryRefused => "repository_refused",
            SkipReason::StorageUnreachable => "storage_unreachable",
            SkipReason::ConcurrencyLimit => "concurrency_limit",
        }
    }

    /// The Event reason when the skip needs the user's attention (a Warning Event).
    pub fn event_reason(&self) -> Option<&'static str> {
        use contract::reason as r;
        match self {
            SkipReason::UnknownPolicy => Some(r::UNKNOWN_POLICY),
            SkipReason::InvalidPolicy => Some(r::INVALID_SCHEDULE),
            SkipReason::BlockMode => Some(r::BLOCK_VOLUME),
            SkipReason::VolumeInUse => Some(r::VOLUME_IN_USE),
            SkipReason::NoMoverUser => Some(r::MOVER_USER_UNKNOWN),
            SkipReason::InvalidCopyMethod => Some(consistency::reason::INVALID_COPY_METHOD),
            SkipReason::InvalidHook => Some(consistency::reason::INVALID_HOOK),
            SkipReason::InvalidDeadline => Some(r::INVALID_MOVER_DEADLINE),
            SkipReason::RepositoryNotGranted => Some(r::REPOSITORY_NOT_GRANTED),
            SkipReason::RepositoryRefused => Some(r::REPOSITORY_REFUSED),
            // One Event for the storage, not one per PVC (see `breakers`).
            _ => None,
        }
    }
}

/// How the mover of a started backup runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Start {
    pub job_name: String,
    /// What the Job serves: the scheduled time, or the `backup-now` value.
    pub slot: String,
    /// The `backup-now` value served, if any.
    pub backup_now: Option<String>,
    pub since: Timestamp,
    pub missed: u64,
    pub placement: Placement,
    pub tolerations: Vec<Toleration>,
    pub run_as: RunAs,
    pub memory: Option<String>,
    pub cpu: Option<String>,
    pub upload_kib_per_sec: Option<u64>,
    /// The Job's activeDeadlineSeconds (PVC annotation, policy, or by size).
    pub deadline_seconds: i64,
    pub adopt_history: bool,
    pub excludes: Option<String>,
    pub policy: String,
    /// How the mover gets at the data, and the point-in-time copy's settings.
    pub copy: CopyPlan,
    /// Hooks of the app pods, in the order they run.
    pub hooks: Vec<PodHooks>,
    /// The repository whose password the scheduler derives; None: the PVC's own
    /// Secret (`stowage.io/secret`) names it.
    pub repository: Option<String>,
    /// The storage of that repository ([`storage_key`]).
    pub storage: Option<String>,
    /// The one backup of an unreachable storage allowed in this pass (circuit breaker
    /// half-open): its result closes or keeps open the breaker.
    pub probe: bool,
}

/// The copy method of one backup and what its temporary objects are made of.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CopyPlan {
    pub method: CopyMethod,
    pub snapshot_class: Option<String>,
    pub storage_class: Option<String>,
    pub size: String,
}

/// The hooks of one app pod that uses the PVC.
#[derive(Debug, Clone, PartialEq)]
pub struct PodHooks {
    pub pod: String,
    pub pre: Option<Hook>,
    pub post: Option<Hook>,
}

/// The decision for one PVC.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Start(Box<Start>),
    Skip { reason: SkipReason, message: String },
}

/// One PVC and what happens to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub namespace: String,
    pub pvc: String,
    pub uid: String,
    /// The policy the PVC follows (opted in).
    pub policy: String,
    pub decision: Decision,
}

/// Whether the namespace is in scope of the include/exclude lists.
pub fn namespace_in_scope(ns: &str, s: &PassSettings) -> bool {
    (s.include_namespaces.is_empty() || s.include_namespaces.iter().any(|n| n == ns))
        && !s.exclude_namespaces.iter().any(|n| n == ns)
}

fn parse_time(a: &BTreeMap<String, String>, key: &str) -> Option<Timestamp> {
    a.get(key).and_then(|v| v.parse().ok())
}

/// The run history recorded on the PVC.
pub fn history(annotations: &BTreeMap<String, String>) -> RunHistory {
    RunHistory {
        last_attempt: parse_time(annotations, contract::status::LAST_ATTEMPT),
        last_success: parse_time(annotations, contract::status::LAST_BACKUP),
    }
}

/// Whom the mover runs as: the PVC annotation, else root-with-capabilities where the
/// namespace opts in, else the user of the app pod. None when unknown (or root without
/// the namespace opt-in): the backup would miss files it cannot read.
pub fn run_as(pvc: &PvcFacts, ns: &NamespaceFacts) -> Result<RunAs, String> {
    if let Some(v) = pvc.annotations.get(user::MOVER_USER) {
        let (uid, gid) = parse_user(v)?;
        if uid == 0 {
            if privileged_namespace(ns) {
                return Ok(RunAs::Privileged);
            }
            return Err(format!(
                "{} asks for root, which needs the namespace label {}=true",
                user::MOVER_USER,
                contract::LABEL_PRIVILEGED_MOVER
            ));
        }
        return Ok(RunAs::User {
            uid,
            gid,
            groups: Vec::new(),
        });
    }
    if privileged_namespace(ns) {
        return Ok(RunAs::Privileged);
    }
    let app = pvc
        .consumers
        .iter()
        .find(|c| c.running && c.uid.is_some())
        .or_else(|| pvc.consumers.iter().find(|c| c.uid.is_some()));
    match app {
        Some(c) if c.uid != Some(0) => {
            let uid = c.uid.unwrap_or_default();
            Ok(RunAs::User {
                uid,
                gid: c.gid.or(c.fs_group).unwrap_or(uid),
                groups: c.fs_group.into_iter().collect(),
            })
        }
        Some(c) => Err(format!(
            "the app pod {} runs as root; a mover reading every file needs root too. Label the \
             namespace {}=true, or annotate the PVC {}=UID:GID with a user that can read the data",
            c.name,
            contract::LABEL_PRIVILEGED_MOVER,
            user::MOVER_USER
        )),
        None => Err(format!(
            "no pod using this PVC declares the user it runs as (runAsUser). Annotate the PVC \
             {}=UID:GID, or label the namespace {}=true to back it up as root",
            user::MOVER_USER,
            contract::LABEL_PRIVILEGED_MOVER
        )),
    }
}

fn privileged_namespace(ns: &NamespaceFacts) -> bool {
    ns.labels
        .get(contract::LABEL_PRIVILEGED_MOVER)
        .is_some_and(|v| v == "true")
}

/// Where the mover must run: next to a running pod of a ReadWriteOnce volume, else
/// where the PV lives (node-local), else anywhere. Tolerations follow the app pod.
pub fn placement(pvc: &PvcFacts) -> (Placement, Vec<Toleration>) {
    let app = pvc.consumers.iter().find(|c| c.running && c.node.is_some());
    let rwo = pvc.access_modes.iter().any(|m| m == "ReadWriteOnce");
    let tolerations = pvc
        .consumers
        .first()
        .map(|c| c.tolerations.clone())
        .unwrap_or_default();
    if let Some(c) = app
        && (rwo || pvc.pv_node_affinity.is_some())
    {
        return (
            Placement::Node(c.node.clone().unwrap_or_default()),
            tolerations,
        );
    }
    match &pvc.pv_node_affinity {
        Some(sel) => (Placement::Affinity(sel.clone()), tolerations),
        None => (Placement::Anywhere, tolerations),
    }
}

/// The copy method the PVC asks for (annotation; default Direct) and its settings.
pub fn copy_plan(pvc: &PvcFacts, settings: &PassSettings) -> Result<CopyPlan, String> {
    let a = &pvc.annotations;
    let method: CopyMethod = a
        .get(consistency::COPY_METHOD)
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or_default();
    if method == CopyMethod::Direct {
        return Ok(CopyPlan::default());
    }
    Ok(CopyPlan {
        method,
        snapshot_class: (method == CopyMethod::Snapshot)
            .then(|| {
                a.get(consistency::VOLUME_SNAPSHOT_CLASS)
                    .filter(|v| !v.is_empty())
                    .cloned()
                    .or_else(|| settings.default_snapshot_class.clone())
            })
            .flatten(),
        // A clone must come from the same driver: the PVC's class unless told.
        storage_class: a
            .get(consistency::COPY_STORAGE_CLASS)
            .filter(|v| !v.is_empty())
            .cloned()
            .or_else(|| pvc.storage_class.clone()),
        size: pvc.capacity.clone().unwrap_or_else(|| "1Gi".into()),
    })
}

/// The hooks of the running pods that use the PVC (Velero annotations), pods in name
/// order. Err: annotations that cannot be used (the backup is skipped with an Event:
/// running it without the declared hook could make an inconsistent backup).
pub fn pod_hooks(pvc: &PvcFacts) -> Result<Vec<PodHooks>, String> {
    let mut pods: Vec<&Consumer> = pvc.consumers.iter().filter(|c| c.running).collect();
    pods.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = Vec::new();
    for c in pods {
        let get = |phase| {
            hooks::pod_hook(&c.annotations, &c.containers, phase)
                .map_err(|e| format!("pod {}: {e}", c.name))
        };
        let (pre, post) = (get(Phase::Pre)?, get(Phase::Post)?);
        if pre.is_some() || post.is_some() {
            out.push(PodHooks {
                pod: c.name.clone(),
                pre,
                post,
            });
        }
    }
    Ok(out)
}

/// Decides every PVC of the pass. `pvcs` are all PVCs of in-scope namespaces.
pub fn plan(
    now: Timestamp,
    settings: &PassSettings,
    policies: &Policies,
    namespaces: &BTreeMap<String, NamespaceFacts>,
    pvcs: &[PvcFacts],
    active: &[ActiveJob],
) -> Vec<Planned> {
    let busy: BTreeSet<&str> = active.iter().map(|j| j.pvc_uid.as_str()).collect();
    let mut out = Vec::new();
    let mut due: Vec<(Timestamp, usize)> = Vec::new();
    for pvc in pvcs {
        if pvc.managed_by_stowage || !namespace_in_scope(&pvc.namespace, settings) {
            continue;
        }
        let ns = namespaces.get(&pvc.namespace).cloned().unwrap_or_default();
        let Some(policy_name) = policy_of(&pvc.labels, Some(&ns.labels), &settings.backup_label)
        else {
            continue;
        };
        let decision = decide_one(
            now,
            settings,
            policies,
            namespaces,
            pvc,
            &policy_name,
            &busy,
        );
        if let Decision::Start(s) = &decision {
            due.push((s.since, out.len()));
        }
        out.push(Planned {
            namespace: pvc.namespace.clone(),
            pvc: pvc.name.clone(),
            uid: pvc.uid.clone(),
            policy: policy_name,
            decision,
        });
    }
    // Most overdue first; the rest wait for a free slot (next pass).
    due.sort();
    // An unreachable storage gets one probe backup (its most overdue PVC), and none
    // while a Job of it runs; its other PVCs wait without taking a slot.
    let breakers = breakers(settings, namespaces, pvcs);
    let storage_of_uid: BTreeMap<&str, String> = pvcs
        .iter()
        .filter_map(|p| Some((p.uid.as_str(), pvc_storage(p, settings, namespaces)?)))
        .collect();
    let running: BTreeSet<&String> = active
        .iter()
        .filter_map(|j| storage_of_uid.get(j.pvc_uid.as_str()))
        .collect();
    let mut probed: BTreeSet<String> = BTreeSet::new();
    due.retain(|&(_, i)| {
        let Decision::Start(s) = &mut out[i].decision else {
            return false;
        };
        let Some(storage) = s.storage.clone() else {
            return true;
        };
        let Some(b) = breakers.get(&storage) else {
            return true;
        };
        match gate(b, running.contains(&storage), probed.contains(&storage)) {
            Gate::Start => true,
            Gate::Probe => {
                s.probe = true;
                probed.insert(storage);
                true
            }
            Gate::Block => {
                out[i].decision = skip(
                    SkipReason::StorageUnreachable,
                    format!(
                        "the storage {storage} is unreachable ({} backups in a row could not \
                         reach it): one probe backup per pass, the others wait",
                        b.failures()
                    ),
                );
                false
            }
        }
    });
    let free = settings.max_concurrent_jobs.saturating_sub(active.len());
    for (_, i) in due.into_iter().skip(free) {
        out[i].decision = Decision::Skip {
            reason: SkipReason::ConcurrencyLimit,
            message: format!(
                "{} mover Jobs may run at once (STOWAGE_MAX_CONCURRENT_JOBS); more overdue \
                 volumes go first, this one starts in a later pass",
                settings.max_concurrent_jobs
            ),
        };
    }
    out
}

fn skip(reason: SkipReason, message: impl Into<String>) -> Decision {
    Decision::Skip {
        reason,
        message: message.into(),
    }
}

fn decide_one(
    now: Timestamp,
    settings: &PassSettings,
    policies: &Policies,
    namespaces: &BTreeMap<String, NamespaceFacts>,
    pvc: &PvcFacts,
    policy_name: &str,
    busy: &BTreeSet<&str>,
) -> Decision {
    let ns = &namespaces.get(&pvc.namespace).cloned().unwrap_or_default();
    if ns.terminating {
        return skip(
            SkipReason::NamespaceTerminating,
            "the namespace is being deleted (its backups stay in the repository)",
        );
    }
    if pvc.terminating {
        return skip(
            SkipReason::Terminating,
            "the PVC is being deleted (its backups stay in the repository)",
        );
    }
    if pvc.populating {
        return skip(
            SkipReason::Populating,
            "the PVC is being restored from its backup (no backup may race the restore)",
        );
    }
    if !pvc.bound {
        return skip(SkipReason::Unbound, "the PVC is not bound to a volume yet");
    }
    if busy.contains(pvc.uid.as_str()) {
        return skip(
            SkipReason::JobRunning,
            "a mover Job for this PVC is running",
        );
    }
    let policy = match policies.get(policy_name) {
        Ok(p) => p,
        Err(PolicyProblem::Unknown { known }) => {
            return skip(
                SkipReason::UnknownPolicy,
                format!(
                    "no backup policy {policy_name:?} in the policies ConfigMap (known: {}); \
                     fix the PVC's label or add the policy",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            );
        }
        Err(PolicyProblem::Invalid(e)) => {
            return skip(
                SkipReason::InvalidPolicy,
                format!(
                    "backup policy {policy_name:?} in the policies ConfigMap is invalid: {e}. Fix \
                     the policy there; its PVCs are not backed up until then"
                ),
            );
        }
    };
    let repository = match repository_of(pvc, settings.repository_base.as_deref(), namespaces) {
        Ok(r) => r,
        Err((reason, message)) => return skip(reason, message),
    };
    if pvc.block_mode {
        return skip(
            SkipReason::BlockMode,
            "the PVC is a raw block volume (volumeMode: Block); stowage backs up filesystems only",
        );
    }
    let copy = match copy_plan(pvc, settings) {
        Ok(c) => c,
        Err(e) => return skip(SkipReason::InvalidCopyMethod, e),
    };
    let hooks = match pod_hooks(pvc) {
        Ok(h) => h,
        Err(e) => return skip(SkipReason::InvalidHook, e),
    };
    let rwop = pvc.access_modes.iter().any(|m| m == "ReadWriteOncePod");
    // Snapshot and Clone read another volume: a pod holding this one is no obstacle.
    if let Some(c) = pvc.consumers.iter().find(|c| c.running)
        && rwop
        && copy.method == CopyMethod::Direct
    {
        return skip(
            SkipReason::VolumeInUse,
            format!(
                "the PVC is ReadWriteOncePod and pod {} uses it: no other pod can mount it; it is \
                 backed up while the app is stopped",
                c.name
            ),
        );
    }

    let a = &pvc.annotations;
    let backup_now = a
        .get(user::BACKUP_NOW)
        .filter(|v| !v.is_empty() && a.get(contract::status::BACKUP_NOW_SERVED) != Some(*v))
        .cloned();
    let (since, missed, slot) = match (
        &backup_now,
        schedule::decide(&policy.schedule, &history(a), now),
    ) {
        (Some(v), due) => {
            let missed = match due {
                Due::Due { missed, .. } => missed,
                Due::NotDue { .. } => 0,
            };
            (now, missed, format!("now:{v}"))
        }
        (None, Due::Due { since, missed }) => (since, missed, since.to_string()),
        (None, Due::NotDue { next }) => {
            return skip(SkipReason::NotDue, format!("next backup at {next}"));
        }
    };
    let run_as = match run_as(pvc, ns) {
        Ok(r) => r,
        Err(e) => return skip(SkipReason::NoMoverUser, e),
    };
    let (placement, tolerations) = match copy.method {
        CopyMethod::Direct => placement(pvc),
        // The temporary volume is new: it binds where the mover runs, or (node-local
        // storage) on the PV's node.
        _ => {
            let (_, tolerations) = placement(pvc);
            match &pvc.pv_node_affinity {
                Some(sel) => (Placement::Affinity(sel.clone()), tolerations),
                None => (Placement::Anywhere, tolerations),
            }
        }
    };
    let deadline_seconds = match mover_job::deadline(
        pvc.capacity_bytes,
        policy.limits.job_deadline.as_deref(),
        a.get(user::MOVER_DEADLINE).map(String::as_str),
    ) {
        Ok(d) => d,
        Err(e) => return skip(SkipReason::InvalidDeadline, e),
    };
    let adopt_history = a.get(user::ADOPT_REPOSITORY).is_some_and(|v| v == "true")
        || a.contains_key(contract::status::POPULATED_FROM);
    Decision::Start(Box::new(Start {
        job_name: naming::mover_job_name(Operation::Backup, &pvc.name, &pvc.uid, &slot),
        slot,
        backup_now,
        since,
        missed,
        placement,
        tolerations,
        run_as,
        memory: a
            .get(user::MOVER_MEMORY)
            .cloned()
            .or_else(|| policy.limits.mover_memory.clone()),
        cpu: a
            .get(user::MOVER_CPU)
            .cloned()
            .or_else(|| policy.limits.mover_cpu.clone()),
        upload_kib_per_sec: policy.limits.upload_kib_per_sec,
        deadline_seconds,
        adopt_history,
        excludes: a.get(user::EXCLUDES).cloned(),
        policy: policy_name.to_string(),
        copy,
        hooks,
        storage: repository.as_deref().and_then(storage_key),
        repository,
        probe: false,
    }))
}

/// The repository whose password the scheduler derives for `pvc`; Ok(None): the PVC
/// names its own Secret. Under `STOWAGE_REPOSITORY_BASE` a repository belongs to the
/// namespace of its first path segment after the base: another namespace's needs its
/// grant ([`grant`]). Outside the base no namespace owns it by layout, so any other
/// namespace could name it too and obtain the same derived password: refused without
/// the PVC's own Secret. Locations are compared as the password derivation sees them
/// (bucket and prefix; endpoint, scheme, `//` and trailing `/` do not matter).
pub fn repository_of(
    pvc: &PvcFacts,
    base: Option<&str>,
    namespaces: &BTreeMap<String, NamespaceFacts>,
) -> Result<Option<String>, (SkipReason, String)> {
    if pvc.annotations.contains_key(user::SECRET) {
        return Ok(None);
    }
    let refused = |m: String| Err((SkipReason::RepositoryRefused, m));
    let Some(url) = pvc.annotations.get(user::REPOSITORY) else {
        return match base {
            Some(b) => Ok(Some(naming::repository_for(b, &pvc.namespace, &pvc.name))),
            None => refused(format!(
                "no repository: set STOWAGE_REPOSITORY_BASE (e.g. s3:https://s3.example/bucket) \
                 in the scheduler, or give the PVC its own Secret with annotation {}",
                user::SECRET
            )),
        };
    };
    let own_secret = format!(
        "give the PVC its own Secret with annotation {} (keys RESTIC_REPOSITORY, \
         RESTIC_PASSWORD, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)",
        user::SECRET
    );
    let Some(base) = base else {
        return refused(format!(
            "{} {url:?}: without STOWAGE_REPOSITORY_BASE no namespace owns a repository, so \
             the scheduler derives no password for it; {own_secret}",
            user::REPOSITORY
        ));
    };
    let (Some(want), Some(root)) = (segments(url), segments(base)) else {
        return refused(format!(
            "{} {url:?} is not a repository location stowage reads (s3:https://host/bucket/path \
             or a local path); fix the annotation",
            user::REPOSITORY
        ));
    };
    if want.1.iter().any(|s| s == "." || s == "..") {
        return refused(format!(
            "{} {url:?}: `.` and `..` segments are not allowed in a repository path",
            user::REPOSITORY
        ));
    }
    let under = want.0 == root.0 && want.1.starts_with(&root.1);
    if !under {
        return refused(format!(
            "{} {url:?} is outside STOWAGE_REPOSITORY_BASE {base}: no namespace owns it, so \
             another namespace could obtain the same password; {own_secret}",
            user::REPOSITORY
        ));
    }
    let Some(owner) = want.1.get(root.1.len()) else {
        return refused(format!(
            "{} {url:?} is STOWAGE_REPOSITORY_BASE itself, not a namespace's repository \
             (<base>/<namespace>/<pvc>)",
            user::REPOSITORY
        ));
    };
    let annotations = namespaces.get(owner).map(|n| &n.annotations);
    if !grant::allows(owner, annotations, &pvc.namespace) {
        return Err((
            SkipReason::RepositoryNotGranted,
            format!(
                "{} {url:?} is a repository of namespace {owner}: {}",
                user::REPOSITORY,
                grant::how_to_grant(owner, &pvc.namespace)
            ),
        ));
    }
    Ok(Some(url.clone()))
}

/// A location as the password derivation identifies it: (kind and bucket, path
/// segments), None when unreadable.
fn segments(url: &str) -> Option<(String, Vec<String>)> {
    let split = |p: &str| -> Vec<String> {
        p.split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    match Location::parse(url, Some("https://s3.invalid")).ok()? {
        Location::S3(s) => Some((format!("s3:{}", s.bucket), split(&s.prefix))),
        Location::Local(p) => Some(("local".into(), split(&p.to_string_lossy()))),
    }
}

/// The storage a repository lives on, as the circuit breaker counts it: endpoint host
/// and bucket (`s3.lan/backups`), `local` for local paths. Never credentials.
pub fn storage_key(repository: &str) -> Option<String> {
    match Location::parse(repository, None).ok()? {
        Location::S3(s) => {
            let host = s
                .endpoint
                .as_deref()
                .map(|e| e.split_once("://").map_or(e, |(_, h)| h))
                .map(|h| {
                    h.rsplit_once('@')
                        .map_or(h, |(_, h)| h)
                        .to_ascii_lowercase()
                })
                .unwrap_or_else(|| "s3.amazonaws.com".into());
            Some(format!("{host}/{}", s.bucket))
        }
        Location::Local(_) => Some("local".into()),
    }
}

/// The storage of a PVC whose repository the scheduler derives (None: own Secret,
/// refused, or unreadable).
pub fn pvc_storage(
    pvc: &PvcFacts,
    settings: &PassSettings,
    namespaces: &BTreeMap<String, NamespaceFacts>,
) -> Option<String> {
    repository_of(pvc, settings.repository_base.as_deref(), namespaces)
        .ok()
        .flatten()
        .as_deref()
        .and_then(storage_key)
}

/// Consecutive backup results that failed to reach a storage before it counts as
/// unreachable.
pub const STORAGE_FAILURE_THRESHOLD: usize = 3;

/// One recorded backup result of a storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageOutcome {
    pub at: Timestamp,
    /// The mover could not reach the storage (reason `Storage` or `StorageTimeout`).
    pub unreachable: bool,
}

/// The circuit breaker of one storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breaker {
    /// Jobs start as usual.
    Closed { failures: usize },
    /// The newest `failures` results all failed to reach the storage, the first of
    /// them at `since`: one probe backup per pass (half-open), the others wait.
    Open { failures: usize, since: Timestamp },
}

impl Breaker {
    pub fn failures(&self) -> usize {
        match *self {
            Breaker::Closed { failures } | Breaker::Open { failures, .. } => failures,
        }
    }

    pub fn is_open(&self) -> bool {
        matches!(self, Breaker::Open { .. })
    }
}

/// The breaker of a storage from its results (any order): open once the newest
/// `threshold` or more all failed to reach it; any other result (a success, or a
/// failure the storage answered, like a wrong password) closes it.
pub fn breaker(outcomes: &[StorageOutcome], threshold: usize) -> Breaker {
    let mut sorted = outcomes.to_vec();
    sorted.sort_by_key(|o| std::cmp::Reverse(o.at));
    let run: Vec<&StorageOutcome> = sorted.iter().take_while(|o| o.unreachable).collect();
    match run.last() {
        Some(first) if run.len() >= threshold.max(1) => Breaker::Open {
            failures: run.len(),
            since: first.at,
        },
        _ => Breaker::Closed {
            failures: run.len(),
        },
    }
}

/// What a due backup of a storage may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Start,
    /// Start it as the pass's one probe of an open breaker.
    Probe,
    /// Wait: the storage is unreachable and a probe runs or was started.
    Block,
}

/// The gate of a due backup: `probe_running`, a Job of this storage is still running
/// (the last probe); `probed`, this pass started a probe already.
pub fn gate(b: &Breaker, probe_running: bool, probed: bool) -> Gate {
    match b {
        Breaker::Closed { .. } => Gate::Start,
        Breaker::Open { .. } if probe_running || probed => Gate::Block,
        Breaker::Open { .. } => Gate::Probe,
    }
}

/// The outcome recorded on a PVC (`last-result`, `last-result-at`), if any.
pub fn recorded_outcome(annotations: &BTreeMap<String, String>) -> Option<StorageOutcome> {
    let at = parse_time(annotations, contract::status::LAST_RESULT_AT)?;
    let result = annotations.get(contract::status::LAST_RESULT)?;
    let kind = result.strip_prefix("Failed: ").unwrap_or("");
    use stowage_common::result::reason as r;
    Some(StorageOutcome {
        at,
        unreachable: kind == r::STORAGE || kind == r::STORAGE_TIMEOUT,
    })
}

/// The breaker of every storage that the opted-in PVCs' recorded results name.
pub fn breakers(
    settings: &PassSettings,
    namespaces: &BTreeMap<String, NamespaceFacts>,
    pvcs: &[PvcFacts],
) -> BTreeMap<String, Breaker> {
    let mut by_storage: BTreeMap<String, Vec<StorageOutcome>> = BTreeMap::new();
    for p in pvcs {
        if p.managed_by_stowage || !namespace_in_scope(&p.namespace, settings) {
            continue;
        }
        let (Some(storage), Some(o)) = (
            pvc_storage(p, settings, namespaces),
            recorded_outcome(&p.annotations),
        ) else {
            continue;
        };
        by_storage.entry(storage).or_default().push(o);
    }
    by_storage
        .into_iter()
        .map(|(k, v)| (k, breaker(&v, STORAGE_FAILURE_THRESHOLD)))
        .collect()
}

/// The longest time between two scheduled times of `schedule` (UTC), in seconds: the
/// age a last successful backup may reach before the next one is due. Scheduled times
/// of a day are the same on every day that matches (cron's minute and hour fields do
/// not depend on the day), so the gaps are those within one matching day and those
/// from the last time of a matching day to the first of the next. Eight years are
/// scanned (a 29 February schedule has four-year gaps). None: it never runs.
pub fn expected_interval(schedule: &Schedule) -> Option<i64> {
    const DAY: i64 = 86_400;
    // A fixed start keeps the result a function of the schedule alone.
    let start: Timestamp = "2024-01-01T00:00:00Z".parse().ok()?;
    let end = start.as_second() + 8 * 366 * DAY;
    let day_of = |t: Timestamp| t.as_second().div_euclid(DAY);
    let mut first = schedule.next_after(Timestamp::from_second(start.as_second() - 1).ok()?)?;
    // Gaps within a matching day.
    let mut longest = 0i64;
    let mut t = first;
    while let Some(n) = schedule.next_after(t) {
        if day_of(n) != day_of(first) {
            break;
        }
        longest = longest.max(n.as_second() - t.as_second());
        t = n;
    }
    // From the last time of each matching day to the first of the next.
    let mut last_of_day = t;
    let mut runs = 1;
    while first.as_second() < end {
        let Some(next) = schedule.next_after(last_of_day) else {
            break;
        };
        longest = longest.max(next.as_second() - last_of_day.as_second());
        first = next;
        let day_end = Timestamp::from_second((day_of(first) + 1) * DAY - 1).ok()?;
        last_of_day = schedule.latest_at_or_before(day_end)?;
        runs += 1;
    }
    (runs > 1 && longest > 0).then_some(longest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use stowage_common::k8s::contract::status;

    const POLICIES: &str = r#"
hourly: { schedule: "@hourly" }
daily: { schedule: "0 3 * * *" }
broken: { schedule: "0 3 * * 8" }
"#;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn settings() -> PassSettings {
        PassSettings {
            backup_label: "backup".into(),
            max_concurrent_jobs: 10,
            include_namespaces: vec![],
            exclude_namespaces: vec![],
            default_snapshot_class: None,
            repository_base: Some("s3:https://s3.lan/b".into()),
        }
    }

    fn app(uid: i64) -> Consumer {
        Consumer {
            name: "app-0".into(),
            node: Some("node-a".into()),
            running: true,
            uid: Some(uid),
            gid: Some(uid),
            fs_group: None,
            tolerations: vec![],
            annotations: BTreeMap::new(),
            containers: vec!["app".into()],
        }
    }

    fn pvc(ns: &str, name: &str, policy: &str) -> PvcFacts {
        PvcFacts {
            namespace: ns.into(),
            name: name.into(),
            uid: format!("uid-{ns}-{name}"),
            labels: BTreeMap::from([("backup".into(), policy.into())]),
            bound: true,
            access_modes: vec!["ReadWriteOnce".into()],
            consumers: vec![app(1000)],
            ..Default::default()
        }
    }

    fn run(pvcs: &[PvcFacts], active: &[ActiveJob], now: &str) -> Vec<Planned> {
        run_ns(pvcs, active, now, BTreeMap::new())
    }

    fn run_ns(
        pvcs: &[PvcFacts],
        active: &[ActiveJob],
        now: &str,
        ns: BTreeMap<String, NamespaceFacts>,
    ) -> Vec<Planned> {
        plan(
            t(now),
            &settings(),
            &Policies::parse(POLICIES).unwrap(),
            &ns,
            pvcs,
            active,
        )
    }

    fn reason(p: &Planned) -> Option<SkipReason> {
        match &p.decision {
            Decision::Skip { reason, .. } => Some(reason.clone()),
            Decision::Start(_) => None,
        }
    }

    fn start(p: &Planned) -> &Start {
        match &p.decision {
            Decision::Start(s) => s,
            d => panic!("not started: {d:?}"),
        }
    }

    #[test]
    fn opt_in_by_pvc_or_namespace_label_and_opt_out() {
        let mut labelled = pvc("a", "p1", "hourly");
        let mut unlabelled = pvc("a", "p2", "");
        unlabelled.labels.clear();
        let mut opted_out = pvc("b", "p3", "none");
        opted_out.labels.insert("backup".into(), "none".into());
        let mut ns_default = pvc("b", "p4", "");
        ns_default.labels.clear();
        labelled.annotations.clear();
        let ns = BTreeMap::from([(
            "b".to_string(),
            NamespaceFacts {
                labels: BTreeMap::from([("backup".into(), "daily".into())]),
                terminating: false,
                ..Default::default()
            },
        )]);
        let out = run_ns(
            &[labelled, unlabelled, opted_out, ns_default],
            &[],
            "2026-11-23T10:00:00Z",
            ns,
        );
        let names: Vec<_> = out.iter().map(|p| p.pvc.as_str()).collect();
        assert_eq!(names, vec!["p1", "p4"]);
        assert_eq!(start(&out[1]).policy, "daily");
    }

    #[test]
    fn first_backup_is_due_at_once_then_follows_the_schedule() {
        let mut p = pvc("a", "p", "hourly");
        let out = run(std::slice::from_ref(&p), &[], "2026-11-23T10:20:00Z");
        let s = start(&out[0]);
        assert_eq!(s.since, t("2026-11-23T10:20:00Z"));
        assert_eq!(s.placement, Placement::Node("node-a".into()));
        assert_eq!(
            s.run_as,
            RunAs::User {
                uid: 1000,
                gid: 1000,
                groups: vec![]
            }
        );
        p.annotations
            .insert(status::LAST_ATTEMPT.into(), "2026-11-23T10:20:05Z".into());
        assert_eq!(
            reason(&run(std::slice::from_ref(&p), &[], "2026-11-23T10:59:59Z")[0]),
            Some(SkipReason::NotDue)
        );
        let out = run(&[p], &[], "2026-11-23T11:00:10Z");
        let s = start(&out[0]);
        assert_eq!(s.since, t("2026-11-23T11:00:00Z"));
        assert_eq!(s.slot, "2026-11-23T11:00:00Z");
        assert_eq!(s.missed, 0);
    }

    #[test]
    fn job_name_is_the_same_on_a_rerun_of_the_pass() {
        let mut p = pvc("a", "p", "hourly");
        p.annotations
            .insert(status::LAST_ATTEMPT.into(), "2026-11-23T09:00:01Z".into());
        let a = start(&run(std::slice::from_ref(&p), &[], "2026-11-23T10:00:05Z")[0])
            .job_name
            .clone();
        let b = start(&run(&[p], &[], "2026-11-23T10:03:00Z")[0])
            .job_name
            .clone();
        assert_eq!(a, b);
    }

    #[test]
    fn long_outage_gives_one_backup_with_missed_intervals() {
        let mut p = pvc("a", "p", "hourly");
        p.annotations
            .insert(status::LAST_ATTEMPT.into(), "2026-11-20T10:00:00Z".into());
        let out = run(&[p], &[], "2026-11-23T10:30:00Z");
        assert_eq!(out.len(), 1);
        let s = start(&out[0]);
        assert_eq!(s.since, t("2026-11-20T11:00:00Z"));
        assert_eq!(s.missed, 71);
    }

    #[test]
    fn mover_deadline_from_the_pvc_the_policy_or_the_size() {
        let now = "2026-11-23T10:00:00Z";
        let policies = Policies::parse(
            "slow: {schedule: \"@hourly\", limits: {jobDeadline: 14h}}\n\
             hourly: {schedule: \"@hourly\"}\n",
        )
        .unwrap();
        let mut by_size = pvc("a", "by-size", "hourly");
        by_size.capacity_bytes = 100 << 30;
        let mut by_policy = pvc("a", "by-policy", "slow");
        by_policy.capacity_bytes = 100 << 30;
        let mut by_pvc = pvc("a", "by-pvc", "slow");
        by_pvc
            .annotations
            .insert(user::MOVER_DEADLINE.into(), "2d".into());
        let mut typo = pvc("a", "typo", "slow");
        typo.annotations
            .insert(user::MOVER_DEADLINE.into(), "2 days".into());
        let out = plan(
            t(now),
            &settings(),
            &policies,
            &BTreeMap::new(),
            &[by_size, by_policy, by_pvc, typo],
            &[],
        );
        let get = |name: &str| out.iter().find(|p| p.pvc == name).unwrap();
        assert_eq!(start(get("by-size")).deadline_seconds, 3600 + 12_800);
        assert_eq!(start(get("by-policy")).deadline_seconds, 14 * 3600);
        assert_eq!(start(get("by-pvc")).deadline_seconds, 2 * 86_400);
        assert_eq!(reason(get("typo")), Some(SkipReason::InvalidDeadline));
        assert_eq!(
            SkipReason::InvalidDeadline.event_reason(),
            Some(contract::reason::INVALID_MOVER_DEADLINE)
        );
    }

    #[test]
    fn skips_with_reasons() {
        let now = "2026-11-23T10:00:00Z";
        let mut unbound = pvc("a", "unbound", "hourly");
        unbound.bound = false;
        let mut terminating = pvc("a", "terminating", "hourly");
        terminating.terminating = true;
        let mut populating = pvc("a", "populating", "hourly");
        populating.populating = true;
        populating.bound = false;
        let running = pvc("a", "running", "hourly");
        let unknown = pvc("a", "unknown", "weekly");
        let broken = pvc("a", "broken", "broken");
        let mut block = pvc("a", "block", "hourly");
        block.block_mode = true;
        let mut rwop = pvc("a", "rwop", "hourly");
        rwop.access_modes = vec!["ReadWriteOncePod".into()];
        let mut root = pvc("a", "root", "hourly");
        root.consumers = vec![app(0)];
        let mut nobody = pvc("a", "nobody", "hourly");
        nobody.consumers.clear();
        let in_dying_ns = pvc("dying", "x", "hourly");
        let mut prime = pvc("stowage", "prime", "hourly");
        prime.managed_by_stowage = true;
        let active = [ActiveJob {
            namespace: "a".into(),
            name: "j".into(),
            pvc_uid: running.uid.clone(),
        }];
        let ns = BTreeMap::from([(
            "dying".to_string(),
            NamespaceFacts {
                labels: BTreeMap::new(),
                terminating: true,
                ..Default::default()
            },
        )]);
        let all = [
            unbound,
            terminating,
            populating,
            running,
            unknown,
            broken,
            block,
            rwop,
            root,
            nobody,
            in_dying_ns,
            prime,
        ];
        let out = run_ns(&all, &active, now, ns);
        let got: Vec<_> = out
            .iter()
            .map(|p| (p.pvc.as_str(), reason(p).unwrap()))
            .collect();
        use SkipReason::*;
        assert_eq!(
            got,
            vec![
                ("unbound", Unbound),
                ("terminating", Terminating),
                ("populating", Populating),
                ("running", JobRunning),
                ("unknown", UnknownPolicy),
                ("broken", InvalidPolicy),
                ("block", BlockMode),
                ("rwop", VolumeInUse),
                ("root", NoMoverUser),
                ("nobody", NoMoverUser),
                ("x", NamespaceTerminating),
            ]
        );
        let msg = |name: &str| match &out.iter().find(|p| p.pvc == name).unwrap().decision {
            Decision::Skip { message, .. } => message.clone(),
            _ => unreachable!(),
        };
        assert!(
            msg("unknown").contains("known: broken") || msg("unknown").contains("daily, hourly"),
            "{}",
            msg("unknown")
        );
        assert!(msg("broken").contains("day-of-week"), "{}", msg("broken"));
        assert!(
            msg("root").contains("stowage.io/privileged-mover=true"),
            "{}",
            msg("root")
        );
    }

    #[test]
    fn concurrency_limit_starts_the_most_overdue_first() {
        let mut ps = Vec::new();
        for (name, last) in [
            ("recent", "2026-11-23T08:00:01Z"),
            ("oldest", "2026-11-20T08:00:01Z"),
            ("middle", "2026-11-22T08:00:01Z"),
        ] {
            let mut p = pvc("a", name, "hourly");
            p.annotations
                .insert(status::LAST_ATTEMPT.into(), last.into());
            ps.push(p);
        }
        let mut s = settings();
        s.max_concurrent_jobs = 3;
        let active = [ActiveJob {
            namespace: "x".into(),
            name: "j".into(),
            pvc_uid: "other".into(),
        }];
        let out = plan(
            t("2026-11-23T10:00:00Z"),
            &s,
            &Policies::parse(POLICIES).unwrap(),
            &BTreeMap::new(),
            &ps,
            &active,
        );
        let started: Vec<_> = out
            .iter()
            .filter(|p| reason(p).is_none())
            .map(|p| p.pvc.as_str())
            .collect();
        assert_eq!(started, vec!["oldest", "middle"]);
        assert_eq!(reason(&out[0]), Some(SkipReason::ConcurrencyLimit));
    }

    #[test]
    fn backup_now_is_served_once() {
        let mut p = pvc("a", "p", "daily");
        p.annotations
            .insert(status::LAST_ATTEMPT.into(), "2026-11-23T03:00:01Z".into());
        p.annotations.insert(user::BACKUP_NOW.into(), "1".into());
        let out = run(std::slice::from_ref(&p), &[], "2026-11-23T10:00:00Z");
        let s = start(&out[0]);
        assert_eq!(s.backup_now.as_deref(), Some("1"));
        assert_eq!(s.slot, "now:1");
        p.annotations
            .insert(status::BACKUP_NOW_SERVED.into(), "1".into());
        assert_eq!(
            reason(&run(std::slice::from_ref(&p), &[], "2026-11-23T10:05:00Z")[0]),
            Some(SkipReason::NotDue)
        );
        p.annotations.insert(user::BACKUP_NOW.into(), "2".into());
        assert_eq!(
            start(&run(&[p], &[], "2026-11-23T10:06:00Z")[0]).slot,
            "now:2"
        );
    }

    #[test]
    fn user_and_placement_follow_app_pod_annotation_and_namespace() {
        let mut p = pvc("a", "p", "hourly");
        p.consumers[0].fs_group = Some(2000);
        p.consumers[0].gid = None;
        let ns = NamespaceFacts::default();
        assert_eq!(
            run_as(&p, &ns).unwrap(),
            RunAs::User {
                uid: 1000,
                gid: 2000,
                groups: vec![2000]
            }
        );
        p.annotations
            .insert(user::MOVER_USER.into(), "33:44".into());
        assert_eq!(
            run_as(&p, &ns).unwrap(),
            RunAs::User {
                uid: 33,
                gid: 44,
                groups: vec![]
            }
        );
        p.annotations.insert(user::MOVER_USER.into(), "www".into());
        assert!(run_as(&p, &ns).unwrap_err().contains("UID:GID"));
        p.annotations.clear();
        let privileged = NamespaceFacts {
            labels: BTreeMap::from([(contract::LABEL_PRIVILEGED_MOVER.into(), "true".into())]),
            terminating: false,
            ..Default::default()
        };
        assert_eq!(run_as(&p, &privileged).unwrap(), RunAs::Privileged);

        // Node-local volume not in use: the PV's node affinity, the app's tolerations.
        let sel = NodeSelector::default();
        p.consumers[0].running = false;
        p.consumers[0].tolerations = vec![Toleration {
            key: Some("k".into()),
            ..Default::default()
        }];
        p.pv_node_affinity = Some(sel.clone());
        let (pl, tol) = placement(&p);
        assert_eq!(pl, Placement::Affinity(sel));
        assert_eq!(tol.len(), 1);
        // Network volume, ReadWriteMany, not node-bound: anywhere.
        p.pv_node_affinity = None;
        p.access_modes = vec!["ReadWriteMany".into()];
        p.consumers[0].running = true;
        assert_eq!(placement(&p).0, Placement::Anywhere);
    }

    #[test]
    fn copy_method_from_the_pvc_annotation() {
        let now = "2026-11-23T10:00:00Z";
        let mut direct = pvc("a", "direct", "hourly");
        direct.storage_class = Some("longhorn".into());
        let mut snap = direct.clone();
        snap.name = "snap".into();
        snap.uid = "uid-snap".into();
        snap.capacity = Some("5Gi".into());
        snap.annotations
            .insert(consistency::COPY_METHOD.into(), "Snapshot".into());
        let mut clone = direct.clone();
        clone.name = "clone".into();
        clone.uid = "uid-clone".into();
        clone
            .annotations
            .insert(consistency::COPY_METHOD.into(), "clone".into());
        clone
            .annotations
            .insert(consistency::COPY_STORAGE_CLASS.into(), "longhorn-2".into());
        let mut bad = direct.clone();
        bad.name = "bad".into();
        bad.uid = "uid-bad".into();
        bad.annotations
            .insert(consistency::COPY_METHOD.into(), "rsync".into());
        let mut s = settings();
        s.default_snapshot_class = Some("csi-snap".into());
        let out = plan(
            t(now),
            &s,
            &Policies::parse(POLICIES).unwrap(),
            &BTreeMap::new(),
            &[direct, snap.clone(), clone, bad],
            &[],
        );
        assert_eq!(start(&out[0]).copy, CopyPlan::default());
        assert_eq!(start(&out[0]).placement, Placement::Node("node-a".into()));
        let sp = start(&out[1]);
        assert_eq!(
            sp.copy,
            CopyPlan {
                method: CopyMethod::Snapshot,
                snapshot_class: Some("csi-snap".into()),
                storage_class: Some("longhorn".into()),
                size: "5Gi".into(),
            }
        );
        // The mover reads a new volume: it need not run next to the app.
        assert_eq!(sp.placement, Placement::Anywhere);
        let cp = start(&out[2]);
        assert_eq!(cp.copy.method, CopyMethod::Clone);
        assert_eq!(cp.copy.snapshot_class, None);
        assert_eq!(cp.copy.storage_class.as_deref(), Some("longhorn-2"));
        assert_eq!(reason(&out[3]), Some(SkipReason::InvalidCopyMethod));
        assert_eq!(
            SkipReason::InvalidCopyMethod.event_reason(),
            Some("InvalidCopyMethod")
        );
        // The PVC's own class annotation wins over the scheduler's default.
        snap.annotations
            .insert(consistency::VOLUME_SNAPSHOT_CLASS.into(), "fast".into());
        assert_eq!(
            copy_plan(&snap, &s).unwrap().snapshot_class.as_deref(),
            Some("fast")
        );
    }

    #[test]
    fn snapshot_and_clone_back_up_a_readwriteoncepod_volume_in_use() {
        let mut p = pvc("a", "rwop", "hourly");
        p.access_modes = vec!["ReadWriteOncePod".into()];
        let now = "2026-11-23T10:00:00Z";
        assert_eq!(
            reason(&run(std::slice::from_ref(&p), &[], now)[0]),
            Some(SkipReason::VolumeInUse)
        );
        p.annotations
            .insert(consistency::COPY_METHOD.into(), "Snapshot".into());
        assert_eq!(reason(&run(&[p], &[], now)[0]), None);
    }

    #[test]
    fn hooks_of_the_running_app_pods() {
        let now = "2026-11-23T10:00:00Z";
        let mut p = pvc("a", "pg", "hourly");
        let mut pod_b = app(1000);
        pod_b.name = "pg-1".into();
        pod_b.containers = vec!["postgres".into(), "exporter".into()];
        pod_b.annotations = BTreeMap::from([
            (
                "pre.hook.backup.velero.io/command".to_string(),
                r#"["/bin/sh","-c","psql -c CHECKPOINT"]"#.to_string(),
            ),
            (
                "post.hook.backup.velero.io/command".to_string(),
                r#"["/bin/true"]"#.to_string(),
            ),
            (
                "post.hook.backup.velero.io/on-error".to_string(),
                "Continue".to_string(),
            ),
        ]);
        let mut stopped = pod_b.clone();
        stopped.name = "pg-old".into();
        stopped.running = false;
        p.consumers = vec![app(1000), pod_b, stopped];
        let out = run(std::slice::from_ref(&p), &[], now);
        let hooks = &start(&out[0]).hooks;
        assert_eq!(hooks.len(), 1, "{hooks:?}");
        assert_eq!(hooks[0].pod, "pg-1");
        let pre = hooks[0].pre.as_ref().unwrap();
        assert_eq!(pre.container, "postgres");
        assert_eq!(pre.on_error, hooks::OnError::Fail);
        let post = hooks[0].post.as_ref().unwrap();
        assert_eq!(post.on_error, hooks::OnError::Continue);

        p.consumers[1]
            .annotations
            .insert("pre.hook.backup.velero.io/timeout".into(), "a while".into());
        let out = run(&[p], &[], now);
        assert_eq!(reason(&out[0]), Some(SkipReason::InvalidHook));
        match &out[0].decision {
            Decision::Skip { message, .. } => {
                assert!(
                    message.contains("pod pg-1") && message.contains("timeout"),
                    "{message}"
                )
            }
            _ => unreachable!(),
        }
    }

    #[test]
    fn namespace_scope_lists() {
        let mut s = settings();
        s.exclude_namespaces = vec!["kube-system".into()];
        assert!(namespace_in_scope("db", &s));
        assert!(!namespace_in_scope("kube-system", &s));
        s.include_namespaces = vec!["db".into()];
        assert!(!namespace_in_scope("web", &s));
    }

    #[test]
    fn expected_interval_is_the_longest_gap_of_the_schedule() {
        let gap = |e: &str| expected_interval(&Schedule::parse(e).unwrap()).unwrap();
        assert_eq!(gap("@hourly"), 3_600);
        assert_eq!(gap("0 3 * * *"), 86_400);
        assert_eq!(gap("@daily"), 86_400);
        assert_eq!(gap("@weekly"), 7 * 86_400);
        assert_eq!(gap("0 4 * * 0"), 7 * 86_400);
        // Weekdays: Friday 02:30 to Monday 02:30.
        assert_eq!(gap("30 2 * * 1-5"), 3 * 86_400);
        // Office hours: 17:45 to 09:00 the next day.
        assert_eq!(gap("*/15 9-17 * * *"), 15 * 3_600 + 15 * 60);
        // The longest month.
        assert_eq!(gap("0 0 1 * *"), 31 * 86_400);
        // Twice a day, unevenly.
        assert_eq!(gap("0 1,5 * * *"), 20 * 3_600);
        // Leap days only: four years.
        assert_eq!(gap("0 0 29 2 *"), (4 * 365 + 1) * 86_400);
    }

    fn base() -> Option<&'static str> {
        Some("s3:https://s3.lan/volsync-backups")
    }

    fn with_repo(url: &str) -> PvcFacts {
        let mut p = pvc("a", "p", "hourly");
        p.annotations
            .insert(user::REPOSITORY.into(), url.to_string());
        p
    }

    fn granting(ns: &str, to: &str) -> BTreeMap<String, NamespaceFacts> {
        BTreeMap::from([(
            ns.to_string(),
            NamespaceFacts {
                annotations: BTreeMap::from([(grant::GRANT_ANNOTATION.into(), to.into())]),
                ..Default::default()
            },
        )])
    }

    #[test]
    fn repositories_of_other_namespaces_need_their_grant() {
        let none = BTreeMap::new();
        // The layout and the PVC's own namespace need nothing.
        assert_eq!(
            repository_of(&pvc("a", "p", "hourly"), base(), &none),
            Ok(Some("s3:https://s3.lan/volsync-backups/a/p".into()))
        );
        assert_eq!(
            repository_of(
                &with_repo("s3:https://s3.lan/volsync-backups/a/old-name"),
                base(),
                &none
            ),
            Ok(Some("s3:https://s3.lan/volsync-backups/a/old-name".into()))
        );
        // Namespace b's repository, however it is spelled: refused with the fix.
        for url in [
            "s3:https://s3.lan/volsync-backups/b/p",
            "s3:s3.lan/volsync-backups//b/p",
            "s3:http://s3.lan/volsync-backups/b/p/",
            "s3:https://elsewhere:9000/volsync-backups/b/p",
            "s3://volsync-backups/b/p",
        ] {
            let (reason, message) = repository_of(&with_repo(url), base(), &none).unwrap_err();
            assert_eq!(reason, SkipReason::RepositoryNotGranted, "{url}");
            assert!(
                message.contains("kubectl annotate namespace b stowage.io/grant-repositories-to=a"),
                "{message}"
            );
            // Granted by b (by name or to everyone): allowed.
            for to in ["a", "c, a", "*"] {
                assert_eq!(
                    repository_of(&with_repo(url), base(), &granting("b", to)),
                    Ok(Some(url.to_string())),
                    "{url} {to}"
                );
            }
            // A grant by another namespace, or to another, is none.
            assert!(repository_of(&with_repo(url), base(), &granting("c", "a")).is_err());
            assert!(repository_of(&with_repo(url), base(), &granting("b", "ab")).is_err());
        }
    }

    #[test]
    fn repositories_outside_the_base_need_the_pvcs_own_secret() {
        let none = BTreeMap::new();
        for url in [
            "s3:https://s3.lan/other-bucket/b/p",
            // The base itself belongs to nobody.
            "s3:https://s3.lan/volsync-backups",
            "s3:https://s3.lan/volsync-backups/",
            "s3:https://s3.lan/volsync-backups/a/../b/p",
            "/srv/restic/b/p",
        ] {
            let (reason, message) = repository_of(&with_repo(url), base(), &none).unwrap_err();
            assert_eq!(reason, SkipReason::RepositoryRefused, "{url}");
            assert!(!message.is_empty());
        }
        // A prefix is compared by segments, not as a string.
        let prefixed = Some("s3:https://s3.lan/bucket/stowage");
        assert_eq!(
            repository_of(
                &with_repo("s3:https://s3.lan/bucket/stowage-x/a/p"),
                prefixed,
                &none
            )
            .unwrap_err()
            .0,
            SkipReason::RepositoryRefused
        );
        assert!(
            repository_of(
                &with_repo("s3:https://s3.lan/bucket/stowage/a/p"),
                prefixed,
                &none
            )
            .is_ok()
        );
        // Without a base no namespace owns anything.
        assert_eq!(
            repository_of(&with_repo("s3:https://s3.lan/b/a/p"), None, &none)
                .unwrap_err()
                .0,
            SkipReason::RepositoryRefused
        );
        assert_eq!(
            repository_of(&pvc("a", "p", "hourly"), None, &none)
                .unwrap_err()
                .0,
            SkipReason::RepositoryRefused
        );
        // The PVC's own Secret: the user's credentials, nothing derived.
        let mut own = with_repo("s3:https://s3.lan/other-bucket/b/p");
        own.annotations.insert(user::SECRET.into(), "mine".into());
        assert_eq!(repository_of(&own, None, &none), Ok(None));
        // In the plan: a refused PVC is skipped with its reason and an Event.
        let out = run(
            &[with_repo("s3:https://s3.lan/b/b/p")],
            &[],
            "2026-11-23T10:00:00Z",
        );
        assert_eq!(reason(&out[0]), Some(SkipReason::RepositoryNotGranted));
        assert_eq!(
            SkipReason::RepositoryNotGranted.event_reason(),
            Some("RepositoryNotGranted")
        );
        let out = run(&[pvc("a", "p", "hourly")], &[], "2026-11-23T10:00:00Z");
        assert_eq!(
            start(&out[0]).repository.as_deref(),
            Some("s3:https://s3.lan/b/a/p")
        );
        assert_eq!(start(&out[0]).storage.as_deref(), Some("s3.lan/b"));
    }

    #[test]
    fn storage_keys_are_endpoint_host_and_bucket() {
        assert_eq!(
            storage_key("s3:https://S3.lan:9000/backups/db/pg").as_deref(),
            Some("s3.lan:9000/backups")
        );
        assert_eq!(
            storage_key("s3:http://s3.lan:9000/backups/x").as_deref(),
            Some("s3.lan:9000/backups")
        );
        assert_eq!(
            storage_key("s3://backups/db").as_deref(),
            Some("s3.amazonaws.com/backups")
        );
        assert_eq!(storage_key("/srv/repo").as_deref(), Some("local"));
        assert_eq!(storage_key("sftp:host:/x"), None);
    }

    fn outcome(at: &str, unreachable: bool) -> StorageOutcome {
        StorageOutcome {
            at: t(at),
            unreachable,
        }
    }

    #[test]
    fn breaker_opens_after_consecutive_unreachable_results_and_closes_on_any_other() {
        let f = |a| outcome(a, true);
        let ok = |a| outcome(a, false);
        assert_eq!(breaker(&[], 3), Breaker::Closed { failures: 0 });
        // Two in a row: still closed.
        assert_eq!(
            breaker(
                &[
                    ok("2026-11-23T08:00:00Z"),
                    f("2026-11-23T09:00:00Z"),
                    f("2026-11-23T10:00:00Z")
                ],
                3
            ),
            Breaker::Closed { failures: 2 }
        );
        // Three in a row (any order given): open since the first of them.
        let three = [
            f("2026-11-23T10:00:00Z"),
            ok("2026-11-23T07:00:00Z"),
            f("2026-11-23T08:00:00Z"),
            f("2026-11-23T09:00:00Z"),
        ];
        assert_eq!(
            breaker(&three, 3),
            Breaker::Open {
                failures: 3,
                since: t("2026-11-23T08:00:00Z")
            }
        );
        // The newest result reached the storage (the probe succeeded, or the storage
        // answered with an error of its own): closed.
        let mut probed = three.to_vec();
        probed.push(ok("2026-11-23T11:00:00Z"));
        assert_eq!(breaker(&probed, 3), Breaker::Closed { failures: 0 });
        // Gate: closed starts all; open (half-open) lets one probe through per pass,
        // none while a Job of the storage runs.
        let open = breaker(&three, 3);
        let closed = breaker(&probed, 3);
        assert_eq!(gate(&closed, true, true), Gate::Start);
        assert_eq!(gate(&open, false, false), Gate::Probe);
        assert_eq!(gate(&open, false, true), Gate::Block);
        assert_eq!(gate(&open, true, false), Gate::Block);
    }

    #[test]
    fn an_unreachable_storage_gets_one_probe_per_pass() {
        let mut ps = Vec::new();
        for (i, name) in ["p1", "p2", "p3", "p4"].iter().enumerate() {
            let mut p = pvc("a", name, "hourly");
            p.annotations.insert(
                status::LAST_ATTEMPT.into(),
                format!("2026-11-23T0{}:00:01Z", 5 + i),
            );
            p.annotations
                .insert(status::LAST_RESULT.into(), "Failed: StorageTimeout".into());
            p.annotations.insert(
                status::LAST_RESULT_AT.into(),
                format!("2026-11-23T0{}:10:00Z", 5 + i),
            );
            ps.push(p);
        }
        // Another storage (same bucket name, other endpoint) is not held back.
        let mut other = pvc("a", "elsewhere", "hourly");
        other.annotations.insert(
            user::REPOSITORY.into(),
            "s3:https://minio.lan/b/a/elsewhere".into(),
        );
        ps.push(other);
        let now = "2026-11-23T10:00:00Z";
        let b = breakers(&settings(), &BTreeMap::new(), &ps);
        assert!(b["s3.lan/b"].is_open(), "{b:?}");
        let out = run(&ps, &[], now);
        let got: Vec<_> = out
            .iter()
            .map(|p| match &p.decision {
                Decision::Start(s) => (p.pvc.as_str(), if s.probe { "probe" } else { "start" }),
                Decision::Skip { reason, .. } => (p.pvc.as_str(), reason.as_str()),
            })
            .collect();
        // The most overdue PVC of the storage is the probe.
        assert_eq!(
            got,
            vec![
                ("p1", "probe"),
                ("p2", "storage_unreachable"),
                ("p3", "storage_unreachable"),
                ("p4", "storage_unreachable"),
                ("elsewhere", "start"),
            ]
        );
        // While the probe runs, nothing of that storage starts.
        let active = [ActiveJob {
            namespace: "a".into(),
            name: "probe".into(),
            pvc_uid: ps[0].uid.clone(),
        }];
        let out = run(&ps, &active, now);
        assert_eq!(reason(&out[0]), Some(SkipReason::JobRunning));
        assert!(
            out[1..4]
                .iter()
                .all(|p| reason(p) == Some(SkipReason::StorageUnreachable)),
            "{out:?}"
        );
        // The probe succeeded: all resume.
        ps[0]
            .annotations
            .insert(status::LAST_RESULT.into(), "Succeeded".into());
        ps[0]
            .annotations
            .insert(status::LAST_RESULT_AT.into(), "2026-11-23T09:55:00Z".into());
        ps[0]
            .annotations
            .insert(status::LAST_ATTEMPT.into(), "2026-11-23T09:50:00Z".into());
        let out = run(&ps, &[], now);
        assert_eq!(
            out.iter().filter(|p| reason(p).is_none()).count(),
            5,
            "{out:?}"
        );
        assert!(out.iter().all(|p| match &p.decision {
            Decision::Start(s) => !s.probe,
            _ => true,
        }));
    }
}
