//! The decisions of one pass, as pure functions over plain data: which PVCs opted in,
//! which are due, which are skipped and why, which Jobs start within the concurrency
//! limit, and how each mover runs (node, user, resources). No I/O here.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{NodeSelector, Toleration};
use stowage_common::k8s::contract::{self, consistency, user};
use stowage_common::k8s::copy::CopyMethod;
use stowage_common::k8s::hooks::{self, Hook, Phase};
use stowage_common::k8s::mover_job::{self, Placement, RunAs};
use stowage_common::k8s::naming::{self, Operation};
use stowage_common::k8s::policy::{Policies, PolicyProblem};
use stowage_common::schedule::{self, Due, RunHistory};

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
    pub decision: Decision,
}

/// The policy a PVC follows: its own label, else its namespace's; an opt-out value on
/// the PVC wins over the namespace. None: not opted in.
pub fn policy_of(
    pvc_labels: &BTreeMap<String, String>,
    ns_labels: &BTreeMap<String, String>,
    key: &str,
) -> Option<String> {
    let value = pvc_labels.get(key).or_else(|| ns_labels.get(key))?;
    let v = value.trim();
    if v.is_empty() || contract::OPT_OUT_VALUES.contains(&v.to_ascii_lowercase().as_str()) {
        return None;
    }
    Some(v.to_string())
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

/// `UID` or `UID:GID`.
pub fn parse_user(v: &str) -> Result<(i64, i64), String> {
    let bad = || {
        format!(
            "{} {v:?} is not a user: expected UID or UID:GID, e.g. 1000 or 1000:1000",
            user::MOVER_USER
        )
    };
    let (u, g) = match v.trim().split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (v.trim(), None),
    };
    let uid: i64 = u.parse().map_err(|_| bad())?;
    let gid: i64 = match g {
        Some(g) => g.parse().map_err(|_| bad())?,
        None => uid,
    };
    if uid < 0 || gid < 0 {
        return Err(bad());
    }
    Ok((uid, gid))
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
        let Some(policy_name) = policy_of(&pvc.labels, &ns.labels, &settings.backup_label) else {
            continue;
        };
        let decision = decide_one(now, settings, policies, &ns, pvc, &policy_name, &busy);
        if let Decision::Start(s) = &decision {
            due.push((s.since, out.len()));
        }
        out.push(Planned {
            namespace: pvc.namespace.clone(),
            pvc: pvc.name.clone(),
            uid: pvc.uid.clone(),
            decision,
        });
    }
    // Most overdue first; the rest wait for a free slot (next pass).
    due.sort();
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
    ns: &NamespaceFacts,
    pvc: &PvcFacts,
    policy_name: &str,
    busy: &BTreeSet<&str>,
) -> Decision {
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
    }))
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
}
