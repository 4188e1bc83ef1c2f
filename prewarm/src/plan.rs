//! Pure decisions of the populator over plain facts: what to do next for one Pending
//! PVC that names the stowage kind. Every step is derived again from the API on each
//! round, so a run killed between any two steps is continued by the next one.
//!
//! The steps of one populate (kubernetes-csi/lib-volume-populator's algorithm):
//! 1. resolve the source and pick the snapshot (I/O, see `source.rs`);
//! 2. create the prime PVC in the stowage namespace (same class, size, access modes;
//!    for WaitForFirstConsumer classes on the user PVC's selected node), recording the
//!    decision of step 1 on it;
//! 3. run a restore mover Job into it (none when there is nothing to restore);
//! 4. annotate the user PVC, move the PV's claimRef to it, delete the prime PVC.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::NodeSelector;
use stowage_common::env::DEFAULT_SNAPSHOT_HOST;
use stowage_common::k8s::contract::{prewarm as pc, user};
use stowage_common::k8s::grant;
use stowage_common::k8s::naming::{self, Operation};
use stowage_common::k8s::restore_kind::RestoreSpec;
use stowage_common::location::Location;
use stowage_common::result::RunResult;

/// A PVC waiting for the populator (Pending, `dataSourceRef` to the stowage kind).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserPvc {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub resource_version: String,
    /// Name of the Restore object in `dataSourceRef`.
    pub restore_name: String,
    pub storage_class: Option<String>,
    pub size: Option<String>,
    pub access_modes: Vec<String>,
    pub volume_mode: Option<String>,
    pub annotations: BTreeMap<String, String>,
    /// `volume.kubernetes.io/selected-node` (WaitForFirstConsumer).
    pub selected_node: Option<String>,
}

impl UserPvc {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn force_empty(&self) -> bool {
        self.annotations
            .get(user::FORCE_EMPTY)
            .is_some_and(|v| v == "true")
    }
}

/// What the populator knows of a storage class.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassFacts {
    pub name: String,
    pub provisioner: String,
    pub wait_for_first_consumer: bool,
}

/// The prime PVC of a populate and the decision recorded on it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PrimeFacts {
    pub name: String,
    /// Bound to a PV (name, resourceVersion, node affinity).
    pub pv: Option<PvFacts>,
    pub repository: String,
    /// Snapshot to restore; `None`: bind empty.
    pub snapshot: Option<String>,
    pub snapshot_time: Option<String>,
    pub empty_reason: Option<String>,
    pub terminating: bool,
    /// The user PVC's own Secret (`stowage.io/secret`) whose repository and password
    /// the restore uses.
    pub secret: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct PvFacts {
    pub name: String,
    pub resource_version: String,
    pub node_affinity: Option<NodeSelector>,
}

/// A restore Job of this populate.
#[derive(Debug, Clone, PartialEq)]
pub struct JobFacts {
    pub name: String,
    pub state: JobState,
    /// The mover's result line (termination message of its succeeded pod), read only
    /// for succeeded Jobs: what was restored is checked against what was planned.
    pub result: Option<RunResult>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum JobState {
    Running,
    /// Completed at this time (the mover exited 0: what it restored is still checked).
    Succeeded {
        at: Timestamp,
    },
    /// Failed at this time, with the mover's reason if known.
    Failed {
        at: Timestamp,
        why: String,
    },
}

/// Settings of the planner.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub system_namespace: String,
    pub repository_base: Option<String>,
    pub unsafe_provisioners: Vec<String>,
    pub restore_backoff: SignedDuration,
    /// How long a probe PVC is given to be provisioned before its class is judged safe.
    pub probe_wait: SignedDuration,
    /// The S3 endpoint of `s3://bucket/...` repositories (`AWS_ENDPOINT_URL_S3`), which
    /// the restore movers are given too: repositories are compared as locations.
    pub default_endpoint: Option<String>,
}

/// What the probe found out about a storage class (recorded in the
/// `stowage-storage-classes` ConfigMap).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    /// `safe` or `unsafe`.
    pub verdict: String,
    /// The provisioner judged: a class re-created with another provisioner is probed
    /// again.
    pub provisioner: String,
    pub judged_at: String,
    pub detail: String,
}

impl Verdict {
    pub fn safe(&self) -> bool {
        self.verdict == pc::probe::SAFE
    }
}

/// The probe PVC of a class, as found in the API.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProbeFacts {
    pub name: String,
    /// When the probe started (its annotation; creation time if missing).
    pub started: Option<Timestamp>,
    /// The PV provisioned for it (`spec.volumeName`, or a PV whose claimRef names it).
    pub pv: Option<String>,
    pub terminating: bool,
}

/// The next step of the probe of one class.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeStep {
    /// No verdict and no probe: create one (on `node` for WaitForFirstConsumer).
    Create,
    /// Waiting (probe being deleted, or not judged yet).
    Wait(String),
    /// Judged: record the verdict, then delete the probe (and its PV).
    Judge(Verdict),
}

/// Name of the probe PVC of a class (deterministic; DNS-1123, at most 63 characters).
pub fn probe_name(class: &str) -> String {
    let clean: String = class
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let full = format!("{}{clean}", pc::probe::NAME_PREFIX);
    if full.len() <= 63 && clean == class {
        return full;
    }
    // Shortened or changed: a hash of the real name keeps names of classes apart.
    let mut h: u32 = 0x811c9dc5;
    for b in class.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    let keep = 63 - pc::probe::NAME_PREFIX.len() - 9;
    let head: String = clean.chars().take(keep).collect();
    format!(
        "{}{}-{h:08x}",
        pc::probe::NAME_PREFIX,
        head.trim_end_matches('-')
    )
}

/// Whether a stored verdict still applies to the class (same provisioner).
pub fn verdict_for<'a>(class: &ClassFacts, v: Option<&'a Verdict>) -> Option<&'a Verdict> {
    v.filter(|v| v.provisioner == class.provisioner)
}

/// The probe's next step for a class without a verdict. Provisioned (a PV exists for
/// the probe) → unsafe, whenever seen; still Pending `probe_wait` after it started →
/// safe.
pub fn probe_step(
    now: Timestamp,
    s: &Settings,
    class: &ClassFacts,
    probe: Option<&ProbeFacts>,
) -> ProbeStep {
    let Some(probe) = probe else {
        return ProbeStep::Create;
    };
    if let Some(pv) = &probe.pv {
        return ProbeStep::Judge(Verdict {
            verdict: pc::probe::UNSAFE.into(),
            provisioner: class.provisioner.clone(),
            judged_at: now.to_string(),
            detail: format!(
                "provisioner {} provisioned probe PVC {}/{} (volume {pv}) although its                  dataSourceRef names a kind it does not know: it ignores volume populators                  and would bind restored PVCs empty",
                class.provisioner, s.system_namespace, probe.name
            ),
        });
    }
    if probe.terminating {
        return ProbeStep::Wait(format!("probe PVC {} is being deleted", probe.name));
    }
    let started = probe.started.unwrap_or(now);
    let until = started + s.probe_wait;
    if now < until {
        return ProbeStep::Wait(format!(
            "probing storage class {} (provisioner {}): probe PVC {}/{} is judged at {until}",
            class.name, class.provisioner, s.system_namespace, probe.name
        ));
    }
    ProbeStep::Judge(Verdict {
        verdict: pc::probe::SAFE.into(),
        provisioner: class.provisioner.clone(),
        judged_at: now.to_string(),
        detail: format!(
            "probe PVC {}/{} stayed Pending for {}s: provisioner {} leaves PVCs with a              foreign dataSourceRef to their populator",
            s.system_namespace,
            probe.name,
            now.duration_since(started).as_secs(),
            class.provisioner
        ),
    })
}

/// Where a PVC's data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub namespace: String,
    pub pvc: String,
    pub repository: String,
    pub selector: Selector,
    /// The PVC's own Secret (`stowage.io/secret`, its namespace): when the source is the
    /// PVC's own backup, its RESTIC_REPOSITORY and RESTIC_PASSWORD replace `repository`
    /// and the derived password.
    pub own_secret: Option<String>,
    /// The namespace whose data this is: the source namespace, or the namespace part of
    /// a repository under the base. Another namespace than the PVC's must grant it
    /// ([`consent`]).
    pub owner_namespace: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Latest,
    Id(String),
    AsOf(Timestamp),
}

/// What the storage said about the source.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceAnswer {
    /// This snapshot (id, time).
    Snapshot { id: String, time: Timestamp },
    /// The storage answered: no repository, or no snapshot in it.
    NoBackup,
    /// S3 error, timeout, wrong password, missing credentials: retry later.
    Unavailable(String),
    /// The Restore object asks for something that does not exist.
    Invalid(String),
}

/// The next step for one PVC.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Nothing to do now; `note` is a (reason, message) worth an Event when it changes.
    Wait {
        why: String,
        note: Option<(&'static str, String)>,
    },
    /// The class provisions such PVCs empty on its own: refused.
    Refuse { message: String },
    /// Step 1: look the source up (needs the storage).
    Resolve(Box<Source>),
    /// Step 2 with the decision for an empty volume (forced).
    CreatePrime(PrimeDecision),
    /// Step 3: start a restore Job (attempt number, name).
    StartJob {
        name: String,
        attempt: u32,
        snapshot: String,
    },
    /// Step 4: hand the volume over.
    HandOver {
        pv: PvFacts,
        snapshot: Option<String>,
    },
}

/// What is recorded on a new prime PVC.
#[derive(Debug, Clone, PartialEq)]
pub struct PrimeDecision {
    pub repository: String,
    pub snapshot: Option<(String, Timestamp)>,
    pub empty_reason: Option<&'static str>,
    pub secret: Option<String>,
}

/// Why a WaitForFirstConsumer PVC waits before any pod using it is scheduled: a wait
/// for the app, not for stowage (not counted by the Pending-too-long metric).
pub const WAITING_FOR_CONSUMER: &str = "waiting for a pod using the PVC to be scheduled";

/// Name of the prime PVC of a user PVC.
pub fn prime_name(user_uid: &str) -> String {
    format!("{}{user_uid}", pc::prime::NAME_PREFIX)
}

/// Name of the restore Job (and its per-run Secret) of one attempt.
pub fn job_name(pvc: &UserPvc, snapshot: &str, attempt: u32) -> String {
    naming::mover_job_name(
        Operation::Restore,
        &pvc.name,
        &pvc.uid,
        &format!("{snapshot}:{attempt}"),
    )
}

/// Whether a provisioner is known to provision populated PVCs empty.
pub fn unsafe_provisioner(s: &Settings, provisioner: &str) -> bool {
    pc::UNSAFE_PROVISIONERS.contains(&provisioner)
        || s.unsafe_provisioners.iter().any(|p| p == provisioner)
}

/// Delay before attempt `attempt` (1-based count of failures so far).
pub fn backoff(base: SignedDuration, failures: u32) -> SignedDuration {
    let factor = 1i64 << failures.saturating_sub(1).min(10);
    let d = SignedDuration::from_secs(base.as_secs().max(1).saturating_mul(factor));
    d.min(SignedDuration::from_hours(1))
}

/// Resolves the source of a PVC: the Restore object's fields, the PVC's repository
/// annotation, or `<base>/<namespace>/<name>`.
pub fn source(s: &Settings, pvc: &UserPvc, spec: &RestoreSpec) -> Result<Source, String> {
    let namespace = spec
        .source_namespace
        .clone()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| pvc.namespace.clone());
    let name = spec
        .source_pvc
        .clone()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| pvc.name.clone());
    let other_source = namespace != pvc.namespace || name != pvc.name;
    let own_repository = spec.repository.as_deref().is_none_or(str::is_empty);
    let own_secret = pvc
        .annotations
        .get(user::SECRET)
        .filter(|v| !other_source && own_repository && !v.is_empty())
        .cloned();
    let repository = match (&spec.repository, pvc.annotations.get(user::REPOSITORY)) {
        (Some(r), _) if !r.is_empty() => r.clone(),
        (_, Some(r)) if !other_source && !r.is_empty() => r.clone(),
        _ => {
            let base = s.repository_base.as_deref().ok_or_else(|| {
                format!(
                    "no repository for PVC {}: set STOWAGE_REPOSITORY_BASE on stowage-prewarm \
                     (e.g. s3:https://s3.example/bucket), annotate the PVC {}, or name one in \
                     the Restore object's spec.repository",
                    pvc.key(),
                    user::REPOSITORY
                )
            })?;
            naming::repository_for(base, &namespace, &name)
        }
    };
    let selector = match (&spec.snapshot, &spec.as_of) {
        (Some(id), _) if !id.is_empty() => Selector::Id(id.to_ascii_lowercase()),
        (_, Some(t)) if !t.is_empty() => Selector::AsOf(t.parse::<Timestamp>().map_err(|e| {
            format!(
                "Restore {}/{}: spec.asOf {t:?} is not an RFC 3339 time ({e}); write e.g. \
                 2026-11-22T03:00:00Z",
                pvc.namespace, pvc.restore_name
            )
        })?),
        _ => Selector::Latest,
    };
    let owner_namespace = s
        .repository_base
        .as_deref()
        .and_then(|b| repository_namespace(b, &repository, s.default_endpoint.as_deref()))
        .unwrap_or_else(|| namespace.clone());
    Ok(Source {
        namespace,
        pvc: name,
        repository,
        selector,
        own_secret,
        owner_namespace,
    })
}

/// The namespace of a repository in the base's layout (`<base>/<namespace>/<pvc>`);
/// `None` when the repository is not under the base.
pub fn repository_namespace(
    base: &str,
    repository: &str,
    default_endpoint: Option<&str>,
) -> Option<String> {
    let first = |rest: &str| {
        let mut parts = rest.trim_matches('/').split('/');
        let ns = parts.next().filter(|n| !n.is_empty())?;
        parts.next()?;
        Some(ns.to_string())
    };
    match (
        Location::parse(base, default_endpoint).ok()?,
        Location::parse(repository, default_endpoint).ok()?,
    ) {
        (Location::S3(b), Location::S3(r)) => {
            if b.endpoint != r.endpoint || b.bucket != r.bucket {
                return None;
            }
            if b.prefix.is_empty() {
                first(&r.prefix)
            } else {
                first(r.prefix.strip_prefix(&b.prefix)?.strip_prefix('/')?)
            }
        }
        (Location::Local(b), Location::Local(r)) => first(r.strip_prefix(&b).ok()?.to_str()?),
        _ => None,
    }
}

/// Whether the PVC may read the source's data: its own namespace's always, another
/// namespace's only with that namespace's grant (`owner_annotations`: the annotations
/// of the owner Namespace, `None` if it does not exist). `Err`: the step to take (wait,
/// with an Event that says how to grant).
pub fn consent(
    pvc: &UserPvc,
    src: &Source,
    owner_annotations: Option<&BTreeMap<String, String>>,
) -> Result<(), Step> {
    if grant::allows(&src.owner_namespace, owner_annotations, &pvc.namespace) {
        return Ok(());
    }
    let message = format!(
        "PVC {} would be restored from repository {} of namespace {}: refused, {}. The PVC \
         stays Pending until the grant exists (or annotate it {}=true to bind it empty)",
        pvc.key(),
        src.repository,
        src.owner_namespace,
        grant::how_to_grant(&src.owner_namespace, &pvc.namespace),
        user::FORCE_EMPTY
    );
    Err(Step::Wait {
        why: format!(
            "namespace {} has not granted namespace {} its repositories",
            src.owner_namespace, pvc.namespace
        ),
        note: Some((pc::reason::RESTORE_NOT_GRANTED, message)),
    })
}

/// A snapshot as the selection needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snap {
    pub id: String,
    pub time: Timestamp,
    pub host: String,
}

/// The order of a round's storage lookups: the PVC waiting longest first (unknown
/// creation time last), then by `namespace/name`. With the pass budget, the ones left
/// over go first in the next round, since they are still the oldest.
pub fn lookup_order(pvcs: &[(Option<Timestamp>, String)]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..pvcs.len()).collect();
    order.sort_by(|&a, &b| {
        let (ta, na) = &pvcs[a];
        let (tb, nb) = &pvcs[b];
        (ta.is_none(), ta, na).cmp(&(tb.is_none(), tb, nb))
    });
    order
}

/// Picks the snapshot. `Latest` prefers the snapshots of stowage's fixed host (all of
/// them if none carries it, as the mover does).
pub fn select(snaps: &[Snap], sel: &Selector) -> SourceAnswer {
    match sel {
        Selector::Latest => {
            let mine: Vec<&Snap> = snaps
                .iter()
                .filter(|s| s.host == DEFAULT_SNAPSHOT_HOST)
                .collect();
            let pool: Vec<&Snap> = if mine.is_empty() {
                snaps.iter().collect()
            } else {
                mine
            };
            match pool.into_iter().max_by_key(|s| s.time) {
                Some(s) => SourceAnswer::Snapshot {
                    id: s.id.clone(),
                    time: s.time,
                },
                None => SourceAnswer::NoBackup,
            }
        }
        Selector::Id(prefix) => {
            let hits: Vec<&Snap> = snaps.iter().filter(|s| s.id.starts_with(prefix)).collect();
            match hits.as_slice() {
                [one] => SourceAnswer::Snapshot {
                    id: one.id.clone(),
                    time: one.time,
                },
                [] => SourceAnswer::Invalid(format!(
                    "no snapshot {prefix} in the repository ({} snapshots)",
                    snaps.len()
                )),
                many => SourceAnswer::Invalid(format!(
                    "snapshot id prefix {prefix} is ambiguous ({} snapshots start with it)",
                    many.len()
                )),
            }
        }
        Selector::AsOf(t) => match snaps.iter().filter(|s| s.time <= *t).max_by_key(|s| s.time) {
            Some(s) => SourceAnswer::Snapshot {
                id: s.id.clone(),
                time: s.time,
            },
            None => SourceAnswer::Invalid(match snaps.iter().map(|s| s.time).min() {
                Some(oldest) => {
                    format!("no snapshot at or before {t}; the oldest is from {oldest}")
                }
                None => format!("no snapshot at or before {t}: the repository holds none"),
            }),
        },
    }
}

/// Turns the storage's answer into the prime PVC's decision, or a reason to wait.
pub fn after_source(source: &Source, answer: SourceAnswer) -> Result<PrimeDecision, Step> {
    match answer {
        SourceAnswer::Snapshot { id, time } => Ok(PrimeDecision {
            repository: source.repository.clone(),
            snapshot: Some((id, time)),
            empty_reason: None,
            secret: source.own_secret.clone(),
        }),
        SourceAnswer::NoBackup => Ok(PrimeDecision {
            repository: source.repository.clone(),
            snapshot: None,
            empty_reason: Some(pc::EMPTY_NO_BACKUP),
            secret: source.own_secret.clone(),
        }),
        SourceAnswer::Unavailable(e) => Err(Step::Wait {
            why: format!("backup source unavailable: {e}"),
            note: Some((
                pc::reason::SOURCE_UNAVAILABLE,
                format!(
                    "cannot tell whether repository {} holds a backup: {e}. The PVC stays \
                     Pending (never bound empty on an error); retried every few seconds",
                    source.repository
                ),
            )),
        }),
        SourceAnswer::Invalid(e) => Err(Step::Wait {
            why: format!("invalid restore: {e}"),
            note: Some((
                pc::reason::INVALID_RESTORE,
                format!(
                    "repository {}: {e}. Fix the Restore object (or annotate the PVC {}=true to \
                     bind it empty)",
                    source.repository,
                    user::FORCE_EMPTY
                ),
            )),
        }),
    }
}

/// A failed attempt of a populate's restore: the Job failed, or it succeeded with a
/// result that does not match the plan (`mismatch`).
struct Failure<'a> {
    at: Timestamp,
    job: &'a str,
    why: String,
    mismatch: bool,
}

/// Whether a restore mover's result is exactly the planned restore: ok, something
/// restored, the planned snapshot (full id) and the planned repository (compared as
/// locations: `local:/x` and `/x`, `s3://b/p` with the default endpoint and
/// `s3:https://endpoint/b/p` are the same). `Err`: what differs, for the Event.
pub fn verify_restore(
    planned_repository: &str,
    planned_snapshot: &str,
    result: Option<&RunResult>,
    default_endpoint: Option<&str>,
) -> Result<(), String> {
    let Some(r) = result else {
        return Err(
            "its pod left no mover result (termination message): what it restored \
                    is unknown"
                .into(),
        );
    };
    if !r.ok {
        return Err(format!(
            "the mover reported a failure ({})",
            r.error
                .as_deref()
                .or(r.reason.as_deref())
                .unwrap_or("no error given")
        ));
    }
    if r.restored != Some(true) {
        return Err(format!(
            "the mover restored nothing (restored: {}): it found no repository or no snapshot \
             at {}",
            r.restored.map_or("unset".to_string(), |b| b.to_string()),
            r.repository.as_deref().unwrap_or("its repository")
        ));
    }
    match r.snapshot.as_deref() {
        Some(id) if id.eq_ignore_ascii_case(planned_snapshot) => {}
        Some(id) => {
            return Err(format!(
                "the mover restored snapshot {id}, not the planned {planned_snapshot}"
            ));
        }
        None => return Err("the mover reported no snapshot id".into()),
    }
    let Some(repo) = r.repository.as_deref() else {
        return Err(format!(
            "the mover did not report its repository (planned {planned_repository}): an older \
             mover image? Use the mover of the same stowage release"
        ));
    };
    let same = match (
        Location::parse(repo, default_endpoint),
        Location::parse(planned_repository, default_endpoint),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => repo.trim_end_matches('/') == planned_repository.trim_end_matches('/'),
    };
    if !same {
        return Err(format!(
            "the mover restored from repository {repo}, not the planned {planned_repository}"
        ));
    }
    Ok(())
}

/// The next step for `pvc`. `verdict` is the probe's verdict on its class, `prime` its
/// prime PVC, `jobs` its restore Jobs.
#[allow(clippy::too_many_arguments)]
pub fn decide(
    now: Timestamp,
    s: &Settings,
    pvc: &UserPvc,
    class: Option<&ClassFacts>,
    verdict: Option<&Verdict>,
    spec: &RestoreSpec,
    prime: Option<&PrimeFacts>,
    jobs: &[JobFacts],
) -> Step {
    let wait = |why: &str| Step::Wait {
        why: why.to_string(),
        note: None,
    };
    if pvc.storage_class.is_none() {
        return wait("the PVC has no storage class yet (default class not applied)");
    }
    let Some(class) = class else {
        return Step::Wait {
            why: "storage class not found".into(),
            note: Some((
                pc::reason::UNSAFE_STORAGE_CLASS,
                format!(
                    "storage class {:?} of PVC {} does not exist: create it, or set \
                     spec.storageClassName",
                    pvc.storage_class.as_deref().unwrap_or(""),
                    pvc.key()
                ),
            )),
        };
    };
    let refuse = |how: String| Step::Refuse {
        message: format!(
            "storage class {} (provisioner {}) {how}: it does not support volume populators, \
             so stowage cannot restore into it safely. Use a class whose provisioner supports \
             populators (CSI drivers, OpenEBS LocalPV), or remove spec.dataSourceRef and \
             restore by hand (manual restore CronJob in kustomize/app/restore-template.yaml)",
            class.name, class.provisioner
        ),
    };
    match verdict_for(class, verdict) {
        // The probe is the truth.
        Some(v) if !v.safe() => {
            return refuse(format!(
                "provisioned stowage's probe PVC at once, empty ({})",
                v.detail
            ));
        }
        Some(_) => {}
        // Until it answered, the known list decides for known-unsafe provisioners; any
        // other class waits for the probe rather than risk an empty volume.
        None if unsafe_provisioner(s, &class.provisioner) => {
            return refuse("provisions PVCs with a dataSourceRef at once, empty".into());
        }
        None => {
            // A prime already created (class judged safe earlier, verdict lost) goes on.
            if prime.is_none() {
                return Step::Wait {
                    why: format!(
                        "waiting for the probe of storage class {} (provisioner {})",
                        class.name, class.provisioner
                    ),
                    note: Some((
                        pc::reason::PROBING_STORAGE_CLASS,
                        format!(
                            "storage class {} (provisioner {}) is not known yet: stowage \
                             checks with a probe PVC whether its provisioner leaves PVCs with \
                             a dataSourceRef to their populator before restoring into it \
                             (about {}s)",
                            class.name,
                            class.provisioner,
                            s.probe_wait.as_secs()
                        ),
                    )),
                };
            }
        }
    }
    let Some(prime) = prime else {
        if class.wait_for_first_consumer && pvc.selected_node.is_none() {
            return Step::Wait {
                why: WAITING_FOR_CONSUMER.into(),
                note: None,
            };
        }
        if pvc.force_empty() {
            let repo = source(s, pvc, spec)
                .map(|x| x.repository)
                .unwrap_or_default();
            return Step::CreatePrime(PrimeDecision {
                repository: repo,
                snapshot: None,
                empty_reason: Some(pc::EMPTY_FORCED),
                secret: None,
            });
        }
        return match source(s, pvc, spec) {
            Ok(src) => Step::Resolve(Box::new(src)),
            Err(e) => Step::Wait {
                why: e.clone(),
                note: Some((pc::reason::INVALID_RESTORE, e)),
            },
        };
    };
    if prime.terminating {
        return wait("prime PVC is being deleted");
    }
    let Some(pv) = &prime.pv else {
        return wait("prime PVC waits for its volume");
    };
    let Some(snapshot) = &prime.snapshot else {
        return Step::HandOver {
            pv: pv.clone(),
            snapshot: None,
        };
    };
    // A Job that succeeded hands the volume over only if its mover restored exactly
    // what was planned; any other success counts as a failed attempt.
    let mut failures: Vec<Failure> = Vec::new();
    for j in jobs {
        match &j.state {
            JobState::Succeeded { at } => {
                match verify_restore(
                    &prime.repository,
                    snapshot,
                    j.result.as_ref(),
                    s.default_endpoint.as_deref(),
                ) {
                    Ok(()) => {
                        return Step::HandOver {
                            pv: pv.clone(),
                            snapshot: Some(snapshot.clone()),
                        };
                    }
                    Err(why) => failures.push(Failure {
                        at: *at,
                        job: &j.name,
                        why,
                        mismatch: true,
                    }),
                }
            }
            JobState::Failed { at, why } => failures.push(Failure {
                at: *at,
                job: &j.name,
                why: why.clone(),
                mismatch: false,
            }),
            JobState::Running => {}
        }
    }
    if let Some(running) = jobs.iter().find(|j| j.state == JobState::Running) {
        // Started again: a run killed between creating the Job and its Secret left a
        // pod waiting for the Secret; creating both is idempotent.
        return Step::StartJob {
            name: running.name.clone(),
            attempt: failures.len() as u32,
            snapshot: snapshot.clone(),
        };
    }
    let attempt = failures.len() as u32;
    if let Some(last) = failures.iter().max_by_key(|f| f.at) {
        let next = last.at + backoff(s.restore_backoff, attempt);
        if now < next {
            let (reason, what) = if last.mismatch {
                (
                    pc::reason::RESTORE_MISMATCH,
                    format!(
                        "restore Job {}/{} succeeded but did not restore what was planned \
                         (snapshot {snapshot} of {}): {}",
                        s.system_namespace, last.job, prime.repository, last.why
                    ),
                )
            } else {
                (
                    pc::reason::RESTORE_FAILED,
                    format!(
                        "restore Job {}/{} failed: {}",
                        s.system_namespace, last.job, last.why
                    ),
                )
            };
            return Step::Wait {
                why: format!("restore failed; retry at {next}"),
                note: Some((
                    reason,
                    format!(
                        "{what} ({attempt} failed attempt(s)). Retried at {next}; the PVC stays \
                         Pending and is never bound empty (annotate it {}=true to give up and \
                         bind it empty)",
                        user::FORCE_EMPTY
                    ),
                )),
            };
        }
    }
    Step::StartJob {
        name: job_name(pvc, snapshot, attempt),
        attempt,
        snapshot: snapshot.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn settings() -> Settings {
        Settings {
            system_namespace: "stowage".into(),
            repository_base: Some("s3:https://s3.lan/backups".into()),
            unsafe_provisioners: vec!["example.com/naive".into()],
            restore_backoff: SignedDuration::from_secs(30),
            probe_wait: SignedDuration::from_secs(60),
            default_endpoint: None,
        }
    }

    fn verdict(safe: bool, provisioner: &str) -> Verdict {
        Verdict {
            verdict: if safe {
                pc::probe::SAFE
            } else {
                pc::probe::UNSAFE
            }
            .into(),
            provisioner: provisioner.into(),
            judged_at: "2026-11-23T09:00:00Z".into(),
            detail: "probe".into(),
        }
    }

    fn pvc() -> UserPvc {
        UserPvc {
            namespace: "db".into(),
            name: "pg".into(),
            uid: "uid-1".into(),
            resource_version: "7".into(),
            restore_name: "pg".into(),
            storage_class: Some("local".into()),
            size: Some("1Gi".into()),
            access_modes: vec!["ReadWriteOnce".into()],
            ..Default::default()
        }
    }

    fn class(wffc: bool) -> ClassFacts {
        ClassFacts {
            name: "local".into(),
            provisioner: "local.csi.openebs.io".into(),
            wait_for_first_consumer: wffc,
        }
    }

    fn prime(snapshot: Option<&str>, bound: bool) -> PrimeFacts {
        PrimeFacts {
            name: prime_name("uid-1"),
            pv: bound.then(|| PvFacts {
                name: "pv-1".into(),
                resource_version: "9".into(),
                node_affinity: None,
            }),
            repository: "s3:https://s3.lan/backups/db/pg".into(),
            snapshot: snapshot.map(str::to_string),
            ..Default::default()
        }
    }

    fn decide_now(
        pvc: &UserPvc,
        class: &ClassFacts,
        prime: Option<&PrimeFacts>,
        jobs: &[JobFacts],
        now: &str,
    ) -> Step {
        let v = verdict(true, &class.provisioner);
        decide(
            t(now),
            &settings(),
            pvc,
            Some(class),
            Some(&v),
            &RestoreSpec::default(),
            prime,
            jobs,
        )
    }

    #[test]
    fn lookups_go_oldest_pvc_first() {
        let pvcs = vec![
            (Some(t("2026-11-23T10:00:00Z")), "b/new".to_string()),
            (None, "a/unknown".to_string()),
            (Some(t("2026-11-23T09:00:00Z")), "z/old".to_string()),
            (Some(t("2026-11-23T09:00:00Z")), "c/old".to_string()),
        ];
        assert_eq!(lookup_order(&pvcs), vec![3, 2, 0, 1]);
    }

    #[test]
    fn default_source_is_the_pvcs_own_repository_latest() {
        let s = source(&settings(), &pvc(), &RestoreSpec::default()).unwrap();
        assert_eq!(s.repository, "s3:https://s3.lan/backups/db/pg");
        assert_eq!(s.selector, Selector::Latest);
        // The PVC's repository annotation wins over the layout.
        let mut p = pvc();
        p.annotations
            .insert(user::REPOSITORY.into(), "s3:https://x/volsync/pg".into());
        assert_eq!(
            source(&settings(), &p, &RestoreSpec::default())
                .unwrap()
                .repository,
            "s3:https://x/volsync/pg"
        );
    }

    #[test]
    fn own_secret_applies_only_to_the_pvcs_own_backup() {
        let mut p = pvc();
        p.annotations
            .insert(user::SECRET.into(), "restic-pg".into());
        let s = source(&settings(), &p, &RestoreSpec::default()).unwrap();
        assert_eq!(s.own_secret.as_deref(), Some("restic-pg"));
        let other = RestoreSpec {
            source_namespace: Some("prod".into()),
            ..Default::default()
        };
        assert_eq!(source(&settings(), &p, &other).unwrap().own_secret, None);
        let repo = RestoreSpec {
            repository: Some("s3:https://y/b/r".into()),
            ..Default::default()
        };
        assert_eq!(source(&settings(), &p, &repo).unwrap().own_secret, None);
    }

    #[test]
    fn restore_object_names_another_namespace_snapshot_or_time() {
        let spec = RestoreSpec {
            source_namespace: Some("prod".into()),
            as_of: Some("2026-11-22T03:00:00Z".into()),
            ..Default::default()
        };
        let mut p = pvc();
        // The PVC's own repository annotation is about its own backups, not the source.
        p.annotations
            .insert(user::REPOSITORY.into(), "s3:https://x/volsync/pg".into());
        let s = source(&settings(), &p, &spec).unwrap();
        assert_eq!(s.repository, "s3:https://s3.lan/backups/prod/pg");
        assert_eq!(s.selector, Selector::AsOf(t("2026-11-22T03:00:00Z")));
        let spec = RestoreSpec {
            snapshot: Some("ABCD1234".into()),
            repository: Some("s3:https://y/b/r".into()),
            ..Default::default()
        };
        let s = source(&settings(), &pvc(), &spec).unwrap();
        assert_eq!(s.selector, Selector::Id("abcd1234".into()));
        assert_eq!(s.repository, "s3:https://y/b/r");
        let bad = RestoreSpec {
            as_of: Some("yesterday".into()),
            ..Default::default()
        };
        let e = source(&settings(), &pvc(), &bad).unwrap_err();
        assert!(e.contains("spec.asOf") && e.contains("RFC 3339"), "{e}");
        let mut no_base = settings();
        no_base.repository_base = None;
        let e = source(&no_base, &pvc(), &RestoreSpec::default()).unwrap_err();
        assert!(e.contains("STOWAGE_REPOSITORY_BASE"), "{e}");
    }

    #[test]
    fn selection_latest_id_and_as_of() {
        let snaps = vec![
            Snap {
                id: "aaaa1111".into(),
                time: t("2026-11-20T03:00:00Z"),
                host: "volsync".into(),
            },
            Snap {
                id: "bbbb2222".into(),
                time: t("2026-11-21T03:00:00Z"),
                host: "volsync".into(),
            },
            Snap {
                id: "cccc3333".into(),
                time: t("2026-11-22T03:00:00Z"),
                host: "laptop".into(),
            },
        ];
        assert_eq!(
            select(&snaps, &Selector::Latest),
            SourceAnswer::Snapshot {
                id: "bbbb2222".into(),
                time: t("2026-11-21T03:00:00Z")
            }
        );
        assert_eq!(
            select(&snaps, &Selector::AsOf(t("2026-11-20T12:00:00Z"))),
            SourceAnswer::Snapshot {
                id: "aaaa1111".into(),
                time: t("2026-11-20T03:00:00Z")
            }
        );
        assert!(matches!(
            select(&snaps, &Selector::AsOf(t("2026-01-01T00:00:00Z"))),
            SourceAnswer::Invalid(_)
        ));
        assert!(matches!(
            select(&snaps, &Selector::Id("cccc".into())),
            SourceAnswer::Snapshot { .. }
        ));
        assert!(matches!(
            select(&snaps, &Selector::Id("dddd".into())),
            SourceAnswer::Invalid(_)
        ));
        assert_eq!(select(&[], &Selector::Latest), SourceAnswer::NoBackup);
        // Asking for a given snapshot of a repository without any is not "fresh install".
        assert!(matches!(
            select(&[], &Selector::Id("aaaa".into())),
            SourceAnswer::Invalid(_)
        ));
    }

    #[test]
    fn storage_errors_never_bind_empty() {
        let src = source(&settings(), &pvc(), &RestoreSpec::default()).unwrap();
        let step = after_source(&src, SourceAnswer::Unavailable("timeout".into())).unwrap_err();
        assert!(matches!(
            step,
            Step::Wait {
                note: Some((pc::reason::SOURCE_UNAVAILABLE, _)),
                ..
            }
        ));
        let d = after_source(&src, SourceAnswer::NoBackup).unwrap();
        assert_eq!(d.snapshot, None);
        assert_eq!(d.empty_reason, Some(pc::EMPTY_NO_BACKUP));
    }

    fn decide_with(c: &ClassFacts, v: Option<&Verdict>, prime: Option<&PrimeFacts>) -> Step {
        decide(
            t("2026-11-23T10:00:00Z"),
            &settings(),
            &pvc(),
            Some(c),
            v,
            &RestoreSpec::default(),
            prime,
            &[],
        )
    }

    #[test]
    fn known_unsafe_classes_are_refused_until_the_probe_answers() {
        let mut c = class(true);
        c.provisioner = "rancher.io/local-path".into();
        assert!(matches!(decide_with(&c, None, None), Step::Refuse { .. }));
        // STOWAGE_UNSAFE_PROVISIONERS.
        c.provisioner = "example.com/naive".into();
        assert!(matches!(decide_with(&c, None, None), Step::Refuse { .. }));
        // The probe is the truth: found safe, the class is used.
        let v = verdict(true, "example.com/naive");
        assert!(matches!(
            decide_with(&c, Some(&v), None),
            Step::Wait { .. } // WaitForFirstConsumer, no node yet
        ));
        let mut imm = c.clone();
        imm.wait_for_first_consumer = false;
        assert!(matches!(
            decide_with(&imm, Some(&v), None),
            Step::Resolve(_)
        ));
    }

    #[test]
    fn unknown_classes_wait_for_the_probe_and_follow_its_verdict() {
        let c = class(false);
        match decide_with(&c, None, None) {
            Step::Wait { why, .. } => assert!(why.contains("probe"), "{why}"),
            other => panic!("{other:?}"),
        }
        let unsafe_v = verdict(false, "local.csi.openebs.io");
        match decide_with(&c, Some(&unsafe_v), None) {
            Step::Refuse { message } => {
                assert!(message.contains("probe"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decide_with(&c, Some(&verdict(true, "local.csi.openebs.io")), None),
            Step::Resolve(_)
        ));
        // A verdict about another provisioner (class re-created) does not count.
        assert!(matches!(
            decide_with(&c, Some(&verdict(true, "other.example.com")), None),
            Step::Wait { .. }
        ));
        // A populate already under way goes on.
        assert!(matches!(
            decide_with(&c, None, Some(&prime(None, true))),
            Step::HandOver { .. }
        ));
    }

    #[test]
    fn probe_verdict_provisioned_is_unsafe_pending_after_the_wait_is_safe() {
        let s = settings();
        let c = class(true);
        let now = t("2026-11-23T10:00:00Z");
        assert_eq!(probe_step(now, &s, &c, None), ProbeStep::Create);
        let mut p = ProbeFacts {
            name: probe_name("local"),
            started: Some(t("2026-11-23T09:59:30Z")),
            pv: None,
            terminating: false,
        };
        assert!(matches!(
            probe_step(now, &s, &c, Some(&p)),
            ProbeStep::Wait(_)
        ));
        // Still Pending after the wait: safe.
        match probe_step(t("2026-11-23T10:00:30Z"), &s, &c, Some(&p)) {
            ProbeStep::Judge(v) => {
                assert!(v.safe());
                assert_eq!(v.provisioner, "local.csi.openebs.io");
            }
            other => panic!("{other:?}"),
        }
        // Provisioned, however early: unsafe.
        p.pv = Some("pvc-123".into());
        match probe_step(now, &s, &c, Some(&p)) {
            ProbeStep::Judge(v) => {
                assert!(!v.safe());
                assert!(v.detail.contains("pvc-123"), "{}", v.detail);
            }
            other => panic!("{other:?}"),
        }
        // A probe being deleted is not judged Pending.
        p.pv = None;
        p.terminating = true;
        assert!(matches!(
            probe_step(t("2026-11-23T11:00:00Z"), &s, &c, Some(&p)),
            ProbeStep::Wait(_)
        ));
    }

    #[test]
    fn probe_names_are_deterministic_and_valid() {
        assert_eq!(probe_name("local-path"), "stowage-probe-local-path");
        let long = "a".repeat(80);
        let n = probe_name(&long);
        assert!(n.len() <= 63, "{n}");
        assert_eq!(n, probe_name(&long));
        assert_ne!(probe_name("Fast.SSD"), probe_name("fast-ssd"));
        assert!(
            probe_name("Fast.SSD")
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
    }

    #[test]
    fn wffc_waits_for_the_selected_node() {
        let step = decide_now(&pvc(), &class(true), None, &[], "2026-11-23T10:00:00Z");
        assert!(matches!(step, Step::Wait { .. }), "{step:?}");
        let mut p = pvc();
        p.selected_node = Some("node-a".into());
        assert!(matches!(
            decide_now(&p, &class(true), None, &[], "2026-11-23T10:00:00Z"),
            Step::Resolve(_)
        ));
        // Immediate classes go at once.
        assert!(matches!(
            decide_now(&pvc(), &class(false), None, &[], "2026-11-23T10:00:00Z"),
            Step::Resolve(_)
        ));
    }

    #[test]
    fn force_empty_skips_the_lookup() {
        let mut p = pvc();
        p.annotations
            .insert(user::FORCE_EMPTY.into(), "true".into());
        match decide_now(&p, &class(false), None, &[], "2026-11-23T10:00:00Z") {
            Step::CreatePrime(d) => {
                assert_eq!(d.snapshot, None);
                assert_eq!(d.empty_reason, Some(pc::EMPTY_FORCED));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn steps_follow_the_prime_and_its_jobs() {
        let now = "2026-11-23T10:00:00Z";
        let p = pvc();
        let c = class(false);
        // Prime not bound yet.
        assert!(matches!(
            decide_now(&p, &c, Some(&prime(Some("abc"), false)), &[], now),
            Step::Wait { .. }
        ));
        // Empty decision: hand over at once, no Job.
        assert!(matches!(
            decide_now(&p, &c, Some(&prime(None, true)), &[], now),
            Step::HandOver { snapshot: None, .. }
        ));
        // A snapshot: first attempt.
        let first = decide_now(&p, &c, Some(&prime(Some("abc"), true)), &[], now);
        let Step::StartJob { name, attempt, .. } = &first else {
            panic!("{first:?}")
        };
        assert_eq!(*attempt, 0);
        assert_eq!(name, &job_name(&p, "abc", 0));
        // Same step on a re-run: the same name (AlreadyExists tells it was started).
        assert_eq!(
            first,
            decide_now(&p, &c, Some(&prime(Some("abc"), true)), &[], now)
        );
        let running = JobFacts {
            name: name.clone(),
            state: JobState::Running,
            result: None,
        };
        // A running Job is "started" again under its own name (its Secret may be
        // missing if a run was killed between the two creations).
        assert_eq!(
            decide_now(&p, &c, Some(&prime(Some("abc"), true)), &[running], now),
            first
        );
        let done = JobFacts {
            name: name.clone(),
            state: JobState::Succeeded {
                at: t("2026-11-23T09:59:00Z"),
            },
            result: Some(restored("abc", "s3:https://s3.lan/backups/db/pg")),
        };
        assert!(matches!(
            decide_now(&p, &c, Some(&prime(Some("abc"), true)), &[done], now),
            Step::HandOver {
                snapshot: Some(_),
                ..
            }
        ));
    }

    #[test]
    fn failed_restores_are_retried_with_backoff_never_bound_empty() {
        let p = pvc();
        let c = class(false);
        let pr = prime(Some("abc"), true);
        let failed = |n: u32, at: &str| JobFacts {
            name: job_name(&p, "abc", n),
            state: JobState::Failed {
                at: t(at),
                why: "S3 unreachable".into(),
            },
            result: None,
        };
        let jobs = [failed(0, "2026-11-23T10:00:00Z")];
        match decide_now(&p, &c, Some(&pr), &jobs, "2026-11-23T10:00:10Z") {
            Step::Wait {
                note: Some((r, m)), ..
            } => {
                assert_eq!(r, pc::reason::RESTORE_FAILED);
                assert!(m.contains("never bound empty"), "{m}");
            }
            other => panic!("{other:?}"),
        }
        match decide_now(&p, &c, Some(&pr), &jobs, "2026-11-23T10:00:31Z") {
            Step::StartJob { attempt, name, .. } => {
                assert_eq!(attempt, 1);
                assert_eq!(name, job_name(&p, "abc", 1));
                assert_ne!(name, jobs[0].name);
            }
            other => panic!("{other:?}"),
        }
        // The second failure waits twice as long.
        let jobs = [
            failed(0, "2026-11-23T10:00:00Z"),
            failed(1, "2026-11-23T10:01:00Z"),
        ];
        assert!(matches!(
            decide_now(&p, &c, Some(&pr), &jobs, "2026-11-23T10:01:45Z"),
            Step::Wait { .. }
        ));
        assert!(matches!(
            decide_now(&p, &c, Some(&pr), &jobs, "2026-11-23T10:02:01Z"),
            Step::StartJob { attempt: 2, .. }
        ));
        assert_eq!(
            backoff(SignedDuration::from_secs(30), 20),
            SignedDuration::from_hours(1)
        );
    }

    /// What a mover reports after restoring `snapshot` of `repository`.
    fn restored(snapshot: &str, repository: &str) -> RunResult {
        RunResult {
            operation: "restore".into(),
            ok: true,
            restored: Some(true),
            snapshot: Some(snapshot.into()),
            repository: Some(repository.into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_restore_is_verified_against_the_plan() {
        let repo = "s3:https://s3.lan/backups/db/pg";
        let id = "abcd".repeat(16);
        let ok = restored(&id, repo);
        assert_eq!(verify_restore(repo, &id, Some(&ok), None), Ok(()));
        // The same location written otherwise is the same repository.
        let other_form = restored(&id, "s3:https://s3.lan/backups/db/pg/");
        assert_eq!(verify_restore(repo, &id, Some(&other_form), None), Ok(()));
        let by_endpoint = restored(&id, "s3://backups/db/pg");
        assert_eq!(
            verify_restore(repo, &id, Some(&by_endpoint), Some("https://s3.lan")),
            Ok(())
        );
        assert_eq!(
            verify_restore(
                "/srv/backups/db/pg",
                &id,
                Some(&restored(&id, "local:/srv/backups/db/pg")),
                None
            ),
            Ok(())
        );
        // Nothing restored: the mover saw no repository (or no snapshot).
        let nothing = RunResult {
            restored: Some(false),
            snapshot: None,
            ..ok.clone()
        };
        let e = verify_restore(repo, &id, Some(&nothing), None).unwrap_err();
        assert!(e.contains("restored nothing"), "{e}");
        // Another snapshot.
        let other = restored(&"ef01".repeat(16), repo);
        let e = verify_restore(repo, &id, Some(&other), None).unwrap_err();
        assert!(e.contains(&"ef01".repeat(16)) && e.contains(&id), "{e}");
        // A prefix of the planned id is not the planned id.
        let prefix = restored(&id[..8], repo);
        assert!(verify_restore(repo, &id, Some(&prefix), None).is_err());
        // Another repository (e.g. a path the pod saw differently).
        let elsewhere = restored(&id, "/tmp/pod/volumes/tmp/backups/db/pg");
        let e = verify_restore(repo, &id, Some(&elsewhere), None).unwrap_err();
        assert!(e.contains("/tmp/pod/volumes/tmp/backups/db/pg"), "{e}");
        // No repository reported, no result, not ok.
        let unknown = RunResult {
            repository: None,
            ..ok.clone()
        };
        assert!(verify_restore(repo, &id, Some(&unknown), None).is_err());
        assert!(verify_restore(repo, &id, None, None).is_err());
        let failed = RunResult {
            ok: false,
            ..ok.clone()
        };
        assert!(verify_restore(repo, &id, Some(&failed), None).is_err());
    }

    #[test]
    fn a_succeeded_job_that_restored_something_else_is_never_handed_over() {
        let p = pvc();
        let c = class(false);
        let pr = prime(Some("abc"), true);
        let job = |n: u32, result: RunResult| JobFacts {
            name: job_name(&p, "abc", n),
            state: JobState::Succeeded {
                at: t("2026-11-23T10:00:00Z"),
            },
            result: Some(result),
        };
        let nothing = RunResult {
            restored: Some(false),
            snapshot: None,
            ..restored("abc", &pr.repository)
        };
        for bad in [
            nothing,
            restored("other", &pr.repository),
            restored("abc", "s3:https://s3.lan/backups/db/other"),
        ] {
            let jobs = [job(0, bad.clone())];
            match decide_now(&p, &c, Some(&pr), &jobs, "2026-11-23T10:00:10Z") {
                Step::Wait {
                    note: Some((r, m)), ..
                } => {
                    assert_eq!(r, pc::reason::RESTORE_MISMATCH, "{bad:?}");
                    assert!(m.contains("did not restore what was planned"), "{m}");
                    assert!(m.contains("never bound"), "{m}");
                }
                other => panic!("{bad:?}: {other:?}"),
            }
            // After the backoff: a new attempt under a new name, never a hand-over.
            match decide_now(&p, &c, Some(&pr), &jobs, "2026-11-23T10:00:31Z") {
                Step::StartJob { attempt, name, .. } => {
                    assert_eq!(attempt, 1);
                    assert_eq!(name, job_name(&p, "abc", 1));
                }
                other => panic!("{other:?}"),
            }
        }
        // A later attempt that matches hands over.
        let jobs = [
            job(0, restored("other", &pr.repository)),
            job(1, restored("abc", &pr.repository)),
        ];
        assert!(matches!(
            decide_now(&p, &c, Some(&pr), &jobs, "2026-11-23T10:01:00Z"),
            Step::HandOver {
                snapshot: Some(_),
                ..
            }
        ));
        // Bind-empty decisions need no Job (the storage's clear answer decided).
        assert!(matches!(
            decide_now(
                &p,
                &c,
                Some(&prime(None, true)),
                &[],
                "2026-11-23T10:00:00Z"
            ),
            Step::HandOver { snapshot: None, .. }
        ));
    }

    #[test]
    fn another_namespaces_data_needs_its_grant() {
        let p = pvc(); // in namespace db
        // Own data: no grant needed.
        let own = source(&settings(), &p, &RestoreSpec::default()).unwrap();
        assert_eq!(own.owner_namespace, "db");
        assert_eq!(consent(&p, &own, None), Ok(()));
        // sourceNamespace: prod's data.
        let spec = RestoreSpec {
            source_namespace: Some("prod".into()),
            ..Default::default()
        };
        let other = source(&settings(), &p, &spec).unwrap();
        assert_eq!(other.owner_namespace, "prod");
        match consent(&p, &other, None) {
            Err(Step::Wait {
                note: Some((r, m)), ..
            }) => {
                assert_eq!(r, pc::reason::RESTORE_NOT_GRANTED);
                assert!(
                    m.contains(
                        "kubectl annotate namespace prod stowage.io/grant-repositories-to=db"
                    ),
                    "{m}"
                );
            }
            other => panic!("{other:?}"),
        }
        let granted = BTreeMap::from([(grant::GRANT_ANNOTATION.to_string(), "db".to_string())]);
        assert_eq!(consent(&p, &other, Some(&granted)), Ok(()));
        let elsewhere = BTreeMap::from([(grant::GRANT_ANNOTATION.to_string(), "dev".to_string())]);
        assert!(consent(&p, &other, Some(&elsewhere)).is_err());
        // A repository URL (Restore object or PVC annotation) under the base names its
        // namespace too.
        let spec = RestoreSpec {
            repository: Some("s3:https://s3.lan/backups/prod/pg".into()),
            ..Default::default()
        };
        assert_eq!(
            source(&settings(), &p, &spec).unwrap().owner_namespace,
            "prod"
        );
        let mut annotated = pvc();
        annotated.annotations.insert(
            user::REPOSITORY.into(),
            "s3:https://s3.lan/backups/prod/pg/".into(),
        );
        let src = source(&settings(), &annotated, &RestoreSpec::default()).unwrap();
        assert_eq!(src.owner_namespace, "prod");
        assert!(consent(&annotated, &src, None).is_err());
        // Outside the base: the source namespace (the PVC's own by default).
        let spec = RestoreSpec {
            repository: Some("s3:https://other.example/volsync/pg".into()),
            ..Default::default()
        };
        assert_eq!(
            source(&settings(), &p, &spec).unwrap().owner_namespace,
            "db"
        );
    }

    #[test]
    fn repository_namespaces_follow_the_base_layout() {
        let ns = |b: &str, r: &str| repository_namespace(b, r, Some("https://s3.lan"));
        assert_eq!(
            ns("s3:https://s3.lan/b", "s3:https://s3.lan/b/app/data"),
            Some("app".into())
        );
        assert_eq!(
            ns("s3://b/pre", "s3:https://s3.lan/b/pre/app/data"),
            Some("app".into())
        );
        assert_eq!(
            ns(
                "s3:https://s3.lan/b/pre",
                "s3:https://s3.lan/b/prefix/app/data"
            ),
            None
        );
        assert_eq!(
            ns("s3:https://s3.lan/b", "s3:https://s3.lan/other/app/data"),
            None
        );
        assert_eq!(ns("s3:https://s3.lan/b", "s3:https://s3.lan/b/app"), None);
        assert_eq!(
            ns("/srv/backups", "local:/srv/backups/app/data"),
            Some("app".into())
        );
        assert_eq!(ns("/srv/backups", "/srv/other/app/data"), None);
    }
}
