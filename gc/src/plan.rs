//! Pure decisions of a gc pass over plain data: which repositories exist and whose they
//! are, which policy applies, what is due, which locks are stale, which Jobs and
//! Secrets go. No I/O here; `pass` gathers the facts and acts.

use std::collections::{BTreeMap, BTreeSet};

use jiff::{SignedDuration, Timestamp};
use stowage_common::k8s::contract::user;
use stowage_common::k8s::credentials::repository_identity;
use stowage_common::k8s::policy::{Policies, PolicyProblem, Retention};
pub use stowage_common::k8s::pvc::policy_of;
use stowage_common::locks::LockInfo;

use crate::retention::Confirmation;

/// A PVC as gc sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pvc {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// `RESTIC_REPOSITORY` of the Secret the PVC names (resolved by the pass).
    pub secret_repository: Option<String>,
}

/// Where a repository's password and keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Creds {
    /// Derived from the master password; gc's own S3 keys.
    Derived,
    /// A VolSync-style Secret in the PVC's namespace (used as it is).
    Secret { namespace: String, name: String },
}

/// One repository to maintain.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Repository URL (restic form).
    pub repository: String,
    /// Identity (`bucket/prefix`): the key of gc's state and metrics.
    pub identity: String,
    /// The PVC it belongs to; `None`: an orphan (its PVC is gone).
    pub pvc: Option<Pvc>,
    /// The policy whose retention applies (`None`: the default retention).
    pub policy: Option<String>,
    pub retention: Retention,
    /// The PVC exists but has no backup policy (no opt-in label on it or its
    /// namespace, or opted out): its snapshots were made by hand and live for the
    /// manual-backup TTL instead of `retention`.
    pub manual: bool,
    pub creds: Creds,
}

impl Target {
    pub fn is_orphan(&self) -> bool {
        self.pvc.is_none()
    }
}

/// Name of the policy that gives repositories without a PVC their retention, if the
/// ConfigMap has one.
pub const DEFAULT_POLICY: &str = "default";

/// Retention without a single rule: nothing is forgotten.
pub fn keep_everything() -> Retention {
    Retention {
        keep_within: None,
        ..Retention::default()
    }
}

/// The retention for a PVC's policy label value; absent: the `default` policy, else
/// the built-in default. A policy that is unknown or does not parse keeps everything:
/// its own rules are the user's intent, and a typo must not cut its history down to
/// the default's. Returns (policy used, retention, warning).
pub fn retention_for(
    policy: Option<&str>,
    policies: &Policies,
) -> (Option<String>, Retention, Option<String>) {
    let fallback = || match policies.valid.get(DEFAULT_POLICY) {
        Some(p) => (Some(DEFAULT_POLICY.to_string()), p.retention.clone()),
        None => (None, Retention::default()),
    };
    match policy {
        Some(name) => match policies.get(name) {
            Ok(p) => (Some(name.to_string()), p.retention.clone(), None),
            Err(PolicyProblem::Invalid(e)) => (
                Some(name.to_string()),
                keep_everything(),
                Some(format!(
                    "policy {name:?} is invalid ({e}): nothing is forgotten in this repository \
                     until the policy is fixed"
                )),
            ),
            // The scheduler does not back up a PVC whose policy is unknown (an Event
            // says so); its history is not cut down to another policy's either.
            Err(PolicyProblem::Unknown { .. }) => (
                Some(name.to_string()),
                keep_everything(),
                Some(format!(
                    "policy {name:?} does not exist in the policies ConfigMap: nothing is \
                     forgotten in this repository until the PVC names a known policy"
                )),
            ),
        },
        None => {
            let (n, r) = fallback();
            (n, r, None)
        }
    }
}

/// All repositories of a pass: those found under the base (`discovered`: namespace,
/// PVC directory, URL) and those PVC annotations name. Deduplicated by identity; a
/// repository under `<base>/<ns>/<pvc>` belongs to the PVC of that name, if any.
/// `ns_labels`: labels of the namespaces (a namespace label sets the policy of its PVCs
/// without one). Returns the targets (sorted by identity) and warnings.
pub fn targets(
    discovered: &[(String, String, String)],
    pvcs: &[Pvc],
    ns_labels: &BTreeMap<String, BTreeMap<String, String>>,
    policies: &Policies,
    backup_label: &str,
) -> (Vec<Target>, Vec<String>) {
    let mut warnings = Vec::new();
    let mut out: BTreeMap<String, Target> = BTreeMap::new();
    let by_name: BTreeMap<(&str, &str), &Pvc> = pvcs
        .iter()
        .map(|p| ((p.namespace.as_str(), p.name.as_str()), p))
        .collect();
    let mut make = |repository: String, pvc: Option<&Pvc>, creds: Creds| {
        let name =
            pvc.and_then(|p| policy_of(&p.labels, ns_labels.get(&p.namespace), backup_label));
        let manual = pvc.is_some() && name.is_none();
        let (policy, retention, warn) = retention_for(name.as_deref(), policies);
        if let (Some(w), Some(p)) = (warn, pvc) {
            warnings.push(format!("PVC {}/{}: {w}", p.namespace, p.name));
        }
        Target {
            identity: repository_identity(&repository),
            repository,
            pvc: pvc.cloned(),
            policy: if manual { None } else { policy },
            retention,
            manual,
            creds,
        }
    };
    // PVCs that name their repository (annotation or Secret) first: theirs wins.
    for p in pvcs {
        let t = if let Some(secret) = p.annotations.get(user::SECRET) {
            // Without a readable Secret the pass has reported the PVC already.
            p.secret_repository.clone().map(|url| {
                make(
                    url,
                    Some(p),
                    Creds::Secret {
                        namespace: p.namespace.clone(),
                        name: secret.clone(),
                    },
                )
            })
        } else {
            p.annotations
                .get(user::REPOSITORY)
                .map(|url| make(url.clone(), Some(p), Creds::Derived))
        };
        if let Some(t) = t {
            out.entry(t.identity.clone()).or_insert(t);
        }
    }
    for (ns, pvc, url) in discovered {
        let owner = by_name.get(&(ns.as_str(), pvc.as_str())).copied();
        let t = make(url.clone(), owner, Creds::Derived);
        out.entry(t.identity.clone()).or_insert(t);
    }
    (out.into_values().collect(), warnings)
}

/// Whether work with interval `every_hours` is due, given when it last ran.
pub fn due(last: Option<Timestamp>, now: Timestamp, every_hours: u64) -> bool {
    match last {
        None => true,
        Some(t) => now.duration_since(t) >= SignedDuration::from_hours(every_hours as i64),
    }
}

/// The read-data subset of a check: `percent` of the packs, a different part each
/// check (`rotation` counts the checks done), so that all data is read over
/// `100 / percent` checks. `None`: no data read.
pub fn read_subset(percent: u32, rotation: u32) -> Option<(u32, u32)> {
    if percent == 0 {
        return None;
    }
    let m = 100u32.div_ceil(percent.min(100));
    Some((rotation % m, m))
}

/// What gc knows when it judges a lock.
#[derive(Debug, Clone, Default)]
pub struct LocksContext {
    /// Locks older than this are stale unless a running pod holds them.
    pub stale_after: SignedDuration,
    /// Names of running stowage pods (a pod's hostname is its name). `None`: the
    /// cluster could not be asked, so no lock is removed for its age.
    pub live_pods: Option<BTreeSet<String>>,
    /// This host's name (locks of dead processes on this host are stale at once,
    /// as restic treats them).
    pub this_host: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockVerdict {
    Keep(String),
    Remove(String),
}

/// Whether a lock may be removed: never a lock held by a running stowage pod or by a
/// live process here, never a fresh one of another host; a lock of a dead process on
/// this host, or one older than the threshold whose holder is not running.
pub fn lock_verdict(
    info: &LockInfo,
    now: Timestamp,
    ctx: &LocksContext,
    pid_alive: &dyn Fn(i64) -> bool,
) -> LockVerdict {
    if let Some(live) = &ctx.live_pods
        && live.contains(&info.hostname)
    {
        return LockVerdict::Keep(format!("held by running pod {}", info.hostname));
    }
    let age = now.duration_since(info.time);
    if info.hostname == ctx.this_host {
        return if pid_alive(info.pid) {
            LockVerdict::Keep(format!("process {} on this host is running", info.pid))
        } else {
            LockVerdict::Remove(format!(
                "its process {} on this host ({}) is gone",
                info.pid, info.hostname
            ))
        };
    }
    if age <= ctx.stale_after {
        return LockVerdict::Keep(format!("fresh ({}s old)", age.as_secs()));
    }
    match &ctx.live_pods {
        None => LockVerdict::Keep(
            "old, but the cluster could not be asked whether its holder runs".into(),
        ),
        Some(_) => LockVerdict::Remove(format!(
            "{} minutes old (threshold {}) and no running stowage pod is named {}",
            age.as_mins(),
            ctx.stale_after.as_mins(),
            info.hostname
        )),
    }
}

/// A mover Job as cleanup sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFacts {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// Completion or failure time; `None`: still running.
    pub finished_at: Option<Timestamp>,
    pub ttl_seconds: Option<i32>,
    /// The UID of the PVC the Job worked on (its label).
    pub pvc_uid: Option<String>,
}

/// Finished Jobs past their history limit (their own TTL, else `default_hours`), and
/// the finished Jobs of PVCs being deleted (`releasing`: their UIDs): a finished pod
/// that names a PVC holds it (Kubernetes' PVC protection), so a user's deleted PVC
/// would stay Terminating for the Job's whole history.
pub fn expired_jobs<'a>(
    jobs: &'a [JobFacts],
    now: Timestamp,
    default_hours: u64,
    releasing: &BTreeSet<String>,
) -> Vec<&'a JobFacts> {
    jobs.iter()
        .filter(|j| {
            j.finished_at.is_some_and(|f| {
                let limit = match j.ttl_seconds {
                    Some(s) => SignedDuration::from_secs(i64::from(s.max(0))),
                    None => SignedDuration::from_hours(default_hours as i64),
                };
                now.duration_since(f) > limit
                    || j.pvc_uid.as_ref().is_some_and(|u| releasing.contains(u))
            })
        })
        .collect()
}

/// The confirmation of a held-back retention for `target` and how to give one: the
/// PVC's annotation `stowage.io/confirm-forget`, else `--confirm-forget REPO=COUNT`
/// (`flags`, by identity; the only way for an orphan). `used`: the value a run already
/// used (gc's state).
pub fn confirmation(
    target: &Target,
    flags: &BTreeMap<String, String>,
    used: Option<&str>,
) -> (Confirmation, String) {
    let flag = flags.get(&target.identity).cloned();
    let (given, how) = match &target.pvc {
        Some(p) => (
            p.annotations.get(user::CONFIRM_FORGET).cloned().or(flag),
            format!(
                "kubectl -n {} annotate pvc {} --overwrite {}",
                p.namespace,
                p.name,
                user::CONFIRM_FORGET
            ),
        ),
        None => (
            flag,
            // No PVC to annotate: a gc pass run with the flag (docs/runbooks.md).
            format!("stowage-gc --confirm-forget {}", target.identity),
        ),
    };
    (
        Confirmation {
            given,
            used: used.map(str::to_string),
        },
        how,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use stowage_common::k8s::policy::Policies;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn pvc(ns: &str, name: &str, labels: &[(&str, &str)], ann: &[(&str, &str)]) -> Pvc {
        Pvc {
            namespace: ns.into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            annotations: ann
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            secret_repository: None,
        }
    }

    const BASE: &str = "s3:https://s3.lan/bk";

    #[test]
    fn targets_find_owners_orphans_and_annotated_repositories() {
        let policies =
            Policies::parse("hourly: {schedule: \"@hourly\", retention: {keepLast: 3}}\n").unwrap();
        let discovered = vec![
            ("a".into(), "data".into(), format!("{BASE}/a/data")),
            ("a".into(), "gone".into(), format!("{BASE}/a/gone")),
        ];
        let pvcs = vec![
            pvc("a", "data", &[("backup", "hourly")], &[]),
            pvc(
                "b",
                "db",
                &[("backup", "nope")],
                &[(user::REPOSITORY, "s3:https://s3.lan/other/x")],
            ),
            Pvc {
                secret_repository: Some("s3:https://s3.lan/volsync/own".into()),
                ..pvc(
                    "c",
                    "own",
                    &[("backup", "hourly")],
                    &[(user::SECRET, "restic-own")],
                )
            },
        ];
        let (ts, warnings) = targets(&discovered, &pvcs, &BTreeMap::new(), &policies, "backup");
        assert_eq!(ts.len(), 4, "{ts:#?}");
        let get = |id: &str| ts.iter().find(|t| t.identity == id).unwrap();
        let data = get("bk/a/data");
        assert_eq!(data.policy.as_deref(), Some("hourly"));
        assert_eq!(data.retention.keep_last, Some(3));
        assert!(!data.is_orphan());
        let gone = get("bk/a/gone");
        assert!(gone.is_orphan());
        assert_eq!(gone.retention, Retention::default());
        // Its policy "nope" does not exist: nothing is forgotten.
        let other = get("other/x");
        assert_eq!(other.retention, keep_everything());
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("b/db") && w.contains("nope")),
            "{warnings:?}"
        );
        assert!(
            ts.iter()
                .any(|t| matches!(&t.creds, Creds::Secret { name, .. } if name == "restic-own"))
        );
    }

    #[test]
    fn pvcs_without_a_policy_get_the_manual_ttl_namespace_labels_count() {
        let policies = Policies::parse(
            "daily: {schedule: \"@daily\", retention: {keepDaily: 7}}\n\
             default: {schedule: \"@daily\", retention: {keepLast: 9}}\n",
        )
        .unwrap();
        let discovered: Vec<(String, String, String)> =
            ["a/plain", "a/off", "n/inherit", "n/own", "a/gone"]
                .iter()
                .map(|p| {
                    let (ns, pvc) = p.split_once('/').unwrap();
                    (ns.into(), pvc.into(), format!("{BASE}/{p}"))
                })
                .collect();
        let pvcs = vec![
            pvc("a", "plain", &[], &[]),
            pvc("a", "off", &[("backup", "none")], &[]),
            pvc("n", "inherit", &[], &[]),
            pvc("n", "own", &[("backup", "Off")], &[]),
        ];
        let ns = BTreeMap::from([(
            "n".to_string(),
            BTreeMap::from([("backup".to_string(), "daily".to_string())]),
        )]);
        let (ts, _) = targets(&discovered, &pvcs, &ns, &policies, "backup");
        let get = |id: &str| ts.iter().find(|t| t.identity == id).unwrap();
        // No label anywhere, or opted out: backed up by hand only, the TTL applies.
        for id in ["bk/a/plain", "bk/a/off", "bk/n/own"] {
            assert!(get(id).manual, "{id}");
            assert_eq!(get(id).policy, None, "{id}");
        }
        // The namespace's label is the PVC's policy, as for the scheduler.
        let inherit = get("bk/n/inherit");
        assert!(!inherit.manual);
        assert_eq!(inherit.policy.as_deref(), Some("daily"));
        assert_eq!(inherit.retention.keep_daily, Some(7));
        // A repository whose PVC is gone is no manual one: the default policy.
        let gone = get("bk/a/gone");
        assert!(gone.is_orphan() && !gone.manual);
        assert_eq!(gone.retention.keep_last, Some(9));
        assert_eq!(policy_of(&BTreeMap::new(), None, "backup"), None);
    }

    #[test]
    fn an_unknown_policy_forgets_nothing() {
        let policies =
            Policies::parse("default: {schedule: \"@daily\", retention: {keepLast: 1}}\n").unwrap();
        let (p, r, warn) = retention_for(Some("hourlly"), &policies);
        assert_eq!(p.as_deref(), Some("hourlly"));
        assert!(
            crate::retention::Rules::from_policy(&r).unwrap().is_empty(),
            "{r:?}"
        );
        assert!(warn.unwrap().contains("nothing is forgotten"));
    }

    #[test]
    fn an_invalid_policy_forgets_nothing() {
        let policies = Policies::parse(
            "broken: {schedule: \"0 3 * * 8\", retention: {keepLast: 1}}\n\
             default: {schedule: \"@daily\", retention: {keepLast: 9}}\n",
        )
        .unwrap();
        let (p, r, warn) = retention_for(Some("broken"), &policies);
        assert_eq!(p.as_deref(), Some("broken"));
        assert!(
            crate::retention::Rules::from_policy(&r).unwrap().is_empty(),
            "{r:?}"
        );
        let warn = warn.unwrap();
        assert!(
            warn.contains("day-of-week") && warn.contains("nothing is forgotten"),
            "{warn}"
        );
    }

    #[test]
    fn default_policy_of_the_configmap_applies_to_orphans() {
        let policies =
            Policies::parse("default: {schedule: \"@daily\", retention: {keepDaily: 7}}\n")
                .unwrap();
        let (p, r, _) = retention_for(None, &policies);
        assert_eq!(p.as_deref(), Some("default"));
        assert_eq!(r.keep_daily, Some(7));
    }

    #[test]
    fn due_and_rotation() {
        let now = t("2026-05-08T12:00:00Z");
        assert!(due(None, now, 168));
        assert!(!due(Some(t("2026-05-02T12:00:01Z")), now, 168));
        assert!(due(Some(t("2026-05-01T12:00:00Z")), now, 168));
        assert_eq!(read_subset(0, 5), None);
        assert_eq!(read_subset(10, 0), Some((0, 10)));
        assert_eq!(read_subset(10, 13), Some((3, 10)));
        assert_eq!(read_subset(30, 3), Some((3, 4)));
        assert_eq!(read_subset(100, 7), Some((0, 1)));
    }

    fn lock(host: &str, pid: i64, age_min: i64, now: Timestamp) -> LockInfo {
        LockInfo {
            time: now - SignedDuration::from_mins(age_min),
            exclusive: false,
            hostname: host.into(),
            username: "u".into(),
            pid,
            uid: 0,
            gid: 0,
        }
    }

    #[test]
    fn stale_lock_rules() {
        let now = t("2026-05-08T12:00:00Z");
        let ctx = LocksContext {
            stale_after: SignedDuration::from_mins(30),
            live_pods: Some(BTreeSet::from(["stowage-backup-x-abc".to_string()])),
            this_host: "gc-pod".into(),
        };
        let alive = |pid: i64| pid == 7;
        let v = |l: &LockInfo| lock_verdict(l, now, &ctx, &alive);
        assert!(matches!(
            v(&lock("dead-pod", 1, 31, now)),
            LockVerdict::Remove(_)
        ));
        assert!(
            matches!(v(&lock("dead-pod", 1, 29, now)), LockVerdict::Keep(_)),
            "fresh is kept"
        );
        assert!(
            matches!(
                v(&lock("stowage-backup-x-abc", 1, 600, now)),
                LockVerdict::Keep(_)
            ),
            "a running pod's lock is kept however old"
        );
        assert!(
            matches!(v(&lock("gc-pod", 99, 1, now)), LockVerdict::Remove(_)),
            "dead pid here"
        );
        assert!(
            matches!(v(&lock("gc-pod", 7, 100, now)), LockVerdict::Keep(_)),
            "live pid here"
        );
        let blind = LocksContext {
            live_pods: None,
            ..ctx.clone()
        };
        assert!(matches!(
            lock_verdict(&lock("dead-pod", 1, 300, now), now, &blind, &alive),
            LockVerdict::Keep(_)
        ));
    }

    fn job(name: &str, finished: Option<&str>, ttl: Option<i32>) -> JobFacts {
        JobFacts {
            namespace: "a".into(),
            name: name.into(),
            uid: format!("u-{name}"),
            finished_at: finished.map(t),
            ttl_seconds: ttl,
            pvc_uid: None,
        }
    }

    #[test]
    fn finished_jobs_past_their_history_go() {
        let now = t("2026-05-08T12:00:00Z");
        let jobs = vec![
            job("running", None, None),
            job("fresh", Some("2026-05-08T11:00:00Z"), None),
            job("old", Some("2026-05-07T11:00:00Z"), None),
            job("short-ttl", Some("2026-05-08T11:00:00Z"), Some(600)),
        ];
        let gone: Vec<&str> = expired_jobs(&jobs, now, 24, &BTreeSet::new())
            .iter()
            .map(|j| j.name.as_str())
            .collect();
        assert_eq!(gone, vec!["old", "short-ttl"]);
    }

    #[test]
    fn finished_jobs_of_a_pvc_being_deleted_go_at_once_running_ones_stay() {
        let now = t("2026-05-08T12:00:00Z");
        let mut fresh = job("fresh", Some("2026-05-08T11:00:00Z"), None);
        fresh.pvc_uid = Some("pvc-1".into());
        let mut running = job("running", None, None);
        running.pvc_uid = Some("pvc-1".into());
        let mut other = job("other", Some("2026-05-08T11:00:00Z"), None);
        other.pvc_uid = Some("pvc-2".into());
        let jobs = vec![fresh, running, other];
        let releasing = BTreeSet::from(["pvc-1".to_string()]);
        let gone: Vec<&str> = expired_jobs(&jobs, now, 24, &releasing)
            .iter()
            .map(|j| j.name.as_str())
            .collect();
        assert_eq!(gone, vec!["fresh"]);
    }

    #[test]
    fn confirmations_come_from_the_pvc_else_the_flag() {
        let target = |pvc: Option<Pvc>| Target {
            repository: format!("{BASE}/a/data"),
            identity: "bk/a/data".into(),
            pvc,
            policy: None,
            retention: Retention::default(),
            manual: false,
            creds: Creds::Derived,
        };
        let flags = BTreeMap::from([("bk/a/data".to_string(), "7".to_string())]);
        let annotated = pvc("a", "data", &[], &[(user::CONFIRM_FORGET, "12")]);
        let (c, how) = confirmation(&target(Some(annotated)), &flags, Some("3"));
        assert_eq!(c.given.as_deref(), Some("12"), "the annotation wins");
        assert_eq!(c.used.as_deref(), Some("3"));
        assert_eq!(
            how,
            "kubectl -n a annotate pvc data --overwrite stowage.io/confirm-forget"
        );
        let (c, _) = confirmation(&target(Some(pvc("a", "data", &[], &[]))), &flags, None);
        assert_eq!(c.given.as_deref(), Some("7"));
        let (c, how) = confirmation(&target(None), &flags, None);
        assert_eq!(c.given.as_deref(), Some("7"));
        assert!(how.contains("--confirm-forget bk/a/data"), "{how}");
        let (c, _) = confirmation(&target(None), &BTreeMap::new(), None);
        assert_eq!(c.given, None);
    }
}
