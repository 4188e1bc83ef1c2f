//! Which repositories a gc pass opens, and in which order (pure decisions).
//!
//! Opening a repository derives its key with scrypt (about a third of a CPU second
//! and 128 MiB), so a pass cannot open 1,000 repositories in the half minute it may
//! take. Two LIST requests (`snapshots/` and `locks/`) show what changed without the
//! key: a repository is opened only when it has work — a check or prune due, a lock
//! to judge, or snapshots (or rules) that changed since retention last ran in full.
//! Those are opened most urgent first, and the pass starts none once its budget is
//! used: the rest keep their state, stay due, and come first in the next pass.

use jiff::Timestamp;
use stowage_common::k8s::naming::short_hash;

use crate::retention::Rules;
use crate::state::RepoState;

/// What the listings of a repository show without opening it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// Hash of the snapshot file names ([`listing_hash`]).
    pub snapshots: String,
    /// Lock files present.
    pub locks: usize,
}

/// The hash of a `snapshots/` listing (file names in any order).
pub fn listing_hash(names: &[String]) -> String {
    let mut sorted: Vec<&str> = names.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    short_hash(&sorted)
}

/// The fingerprint of retention rules as they apply across passes: the manual-backup
/// TTL's cutoff moves with the clock, so it counts by its length (`ttl`), and
/// `recheck_at` covers what expires by time.
pub fn rules_fingerprint(rules: &Rules, ttl: Option<&str>) -> String {
    let moving = Rules {
        taken_after: None,
        ..rules.clone()
    };
    short_hash(&[
        &format!("{moving:?}"),
        ttl.filter(|_| rules.taken_after.is_some()).unwrap_or(""),
    ])
}

/// How urgent the work on a repository is; the order of a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Urgency {
    /// Damaged (checked at every pass), holding a lock (a stale one blocks every
    /// backup), or not listable (the error is reported).
    Now,
    /// A check or prune is due.
    Overdue,
    /// Its snapshots or rules changed: retention may forget something.
    Changed,
}

/// The decision on one repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Visit {
    /// Nothing to do: not opened; the results of its last visit stand.
    Skip,
    /// Open it. `since`: how long it has waited (`None`: never done, first in line).
    Open {
        urgency: Urgency,
        since: Option<Timestamp>,
        why: &'static str,
    },
}

/// What is due by time for a repository (the pass's interval rules, `plan::due`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Due {
    pub check: bool,
    pub prune: bool,
    /// When the due work became due (`None`: never done).
    pub since: Option<Timestamp>,
}

/// Since when the due work of a repository is due: the earliest of its check (every
/// `check_hours`) and prune (every `prune_hours`, or since the check that found too
/// much unused data) that are due; `None` if one of them was never done.
pub fn due_since(
    st: &RepoState,
    check_due: bool,
    prune_due: bool,
    check_hours: u64,
    prune_hours: u64,
) -> Option<Timestamp> {
    let after = |t: Option<Timestamp>, hours: u64| {
        t.map(|t| t + jiff::SignedDuration::from_hours(hours as i64))
    };
    let mut since: Vec<Option<Timestamp>> = Vec::new();
    if check_due {
        since.push(after(st.last_check, check_hours));
    }
    if prune_due {
        since.push(if st.prune_wanted {
            st.last_check.or(st.last_prune)
        } else {
            after(st.last_prune, prune_hours)
        });
    }
    // `None < Some`: never done wins.
    since.into_iter().min().flatten()
}

/// Whether and why to open a repository in this pass. `listing`: `None` when it could
/// not be listed. `rules`: [`rules_fingerprint`] of the rules that apply now.
pub fn visit(
    st: &RepoState,
    listing: Option<&Listing>,
    rules: &str,
    due: Due,
    now: Timestamp,
) -> Visit {
    let open = |urgency, since, why| Visit::Open {
        urgency,
        since,
        why,
    };
    let Some(l) = listing else {
        return open(Urgency::Now, st.visited, "its listing failed");
    };
    if st.damaged.is_some() {
        return open(Urgency::Now, st.visited, "damaged: checked at every pass");
    }
    if l.locks > 0 {
        return open(Urgency::Now, st.visited, "holds locks");
    }
    if due.check || due.prune {
        return open(Urgency::Overdue, due.since, "check or prune due");
    }
    if st.listing.as_deref() != Some(l.snapshots.as_str()) {
        return open(Urgency::Changed, st.visited, "snapshots changed");
    }
    if st.rules.as_deref() != Some(rules) {
        return open(Urgency::Changed, st.visited, "retention rules changed");
    }
    if st.recheck_at.is_some_and(|t| t <= now) {
        return open(Urgency::Changed, st.recheck_at, "manual backups expire");
    }
    Visit::Skip
}

/// The order in which repositories are opened: most urgent first, then the one
/// waiting longest (never done first), then by name. Items are (name, visit); skipped
/// ones are left out.
pub fn order<'a>(visits: &[(&'a str, &Visit)]) -> Vec<&'a str> {
    let mut open: Vec<(Urgency, Option<Timestamp>, &str)> = visits
        .iter()
        .filter_map(|(name, v)| match v {
            Visit::Open { urgency, since, .. } => Some((*urgency, *since, *name)),
            Visit::Skip => None,
        })
        .collect();
    // `None < Some`: never done sorts first.
    open.sort();
    open.into_iter().map(|(_, _, n)| n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use stowage_common::k8s::policy::Retention;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn done(listing: &str, rules: &str) -> RepoState {
        RepoState {
            last_prune: Some(t("2026-11-20T00:00:00Z")),
            last_check: Some(t("2026-11-23T00:00:00Z")),
            listing: Some(listing.into()),
            rules: Some(rules.into()),
            visited: Some(t("2026-11-23T00:00:00Z")),
            ..Default::default()
        }
    }

    fn seen(snapshots: &str, locks: usize) -> Listing {
        Listing {
            snapshots: snapshots.into(),
            locks,
        }
    }

    const NOW: &str = "2026-11-23T10:00:00Z";

    #[test]
    fn an_unchanged_repository_with_nothing_due_is_not_opened() {
        let st = done("h1", "r1");
        let v = visit(&st, Some(&seen("h1", 0)), "r1", Due::default(), t(NOW));
        assert_eq!(v, Visit::Skip);
    }

    #[test]
    fn work_opens_it() {
        let st = done("h1", "r1");
        let now = t(NOW);
        let urgency = |v: Visit| match v {
            Visit::Open { urgency, .. } => Some(urgency),
            Visit::Skip => None,
        };
        // A new snapshot, other rules.
        let v = visit(&st, Some(&seen("h2", 0)), "r1", Due::default(), now);
        assert_eq!(urgency(v), Some(Urgency::Changed));
        let v = visit(&st, Some(&seen("h1", 0)), "r2", Due::default(), now);
        assert_eq!(urgency(v), Some(Urgency::Changed));
        // A lock (maybe stale, blocking backups), a failed listing, damage.
        let v = visit(&st, Some(&seen("h1", 1)), "r1", Due::default(), now);
        assert_eq!(urgency(v), Some(Urgency::Now));
        assert_eq!(
            urgency(visit(&st, None, "r1", Due::default(), now)),
            Some(Urgency::Now)
        );
        let damaged = RepoState {
            damaged: Some("pack missing".into()),
            ..st.clone()
        };
        let v = visit(&damaged, Some(&seen("h1", 0)), "r1", Due::default(), now);
        assert_eq!(urgency(v), Some(Urgency::Now));
        // Check or prune due.
        let due = Due {
            check: true,
            prune: false,
            since: Some(t("2026-11-24T00:00:00Z")),
        };
        let v = visit(&st, Some(&seen("h1", 0)), "r1", due, now);
        assert_eq!(urgency(v), Some(Urgency::Overdue));
        // Never maintained: no listing recorded.
        let v = visit(
            &RepoState::default(),
            Some(&seen("h1", 0)),
            "r1",
            Due::default(),
            now,
        );
        assert_eq!(urgency(v), Some(Urgency::Changed));
    }

    #[test]
    fn manual_backups_reopen_it_when_they_expire() {
        let st = RepoState {
            recheck_at: Some(t("2026-11-23T12:00:00Z")),
            ..done("h1", "r1")
        };
        let l = seen("h1", 0);
        assert_eq!(
            visit(&st, Some(&l), "r1", Due::default(), t(NOW)),
            Visit::Skip
        );
        assert!(matches!(
            visit(
                &st,
                Some(&l),
                "r1",
                Due::default(),
                t("2026-11-23T12:00:00Z")
            ),
            Visit::Open {
                urgency: Urgency::Changed,
                ..
            }
        ));
    }

    #[test]
    fn overdue_since_the_earliest_due_work() {
        let st = done("h", "r");
        // Checked 2026-11-23 daily, pruned 2026-11-20 weekly.
        assert_eq!(
            due_since(&st, true, false, 24, 168),
            Some(t("2026-11-24T00:00:00Z"))
        );
        assert_eq!(
            due_since(&st, true, true, 24, 168),
            Some(t("2026-11-24T00:00:00Z"))
        );
        assert_eq!(
            due_since(&st, false, true, 24, 72),
            Some(t("2026-11-23T00:00:00Z"))
        );
        // Unused data measured at the last check: due since that check.
        let wanted = RepoState {
            prune_wanted: true,
            ..st.clone()
        };
        assert_eq!(
            due_since(&wanted, false, true, 24, 168),
            Some(t("2026-11-23T00:00:00Z"))
        );
        // Never checked: first in line.
        assert_eq!(due_since(&RepoState::default(), true, true, 24, 168), None);
        assert_eq!(due_since(&st, false, false, 24, 168), None);
    }

    #[test]
    fn most_urgent_then_longest_waiting_first() {
        let open = |urgency, since: Option<&str>| Visit::Open {
            urgency,
            since: since.map(t),
            why: "",
        };
        let a = open(Urgency::Changed, Some("2026-11-20T00:00:00Z"));
        let b = open(Urgency::Overdue, Some("2026-11-22T00:00:00Z"));
        let c = open(Urgency::Overdue, None);
        let d = open(Urgency::Now, Some("2026-11-23T09:00:00Z"));
        let e = Visit::Skip;
        let f = open(Urgency::Overdue, Some("2026-11-21T00:00:00Z"));
        let visits = [
            ("a", &a),
            ("b", &b),
            ("c", &c),
            ("d", &d),
            ("e", &e),
            ("f", &f),
        ];
        assert_eq!(order(&visits), vec!["d", "c", "f", "b", "a"]);
    }

    #[test]
    fn listing_hash_ignores_order_and_rules_ignore_the_moving_cutoff() {
        let a = vec!["x".to_string(), "y".to_string()];
        let b = vec!["y".to_string(), "x".to_string()];
        assert_eq!(listing_hash(&a), listing_hash(&b));
        assert_ne!(listing_hash(&a), listing_hash(&a[..1]));
        let r1 = Rules::manual_ttl("720h", t("2026-11-23T10:00:00Z")).unwrap();
        let r2 = Rules::manual_ttl("720h", t("2026-11-23T11:00:00Z")).unwrap();
        let r3 = Rules::manual_ttl("24h", t("2026-11-23T11:00:00Z")).unwrap();
        assert_eq!(
            rules_fingerprint(&r1, Some("720h")),
            rules_fingerprint(&r2, Some("720h"))
        );
        assert_ne!(
            rules_fingerprint(&r2, Some("720h")),
            rules_fingerprint(&r3, Some("24h"))
        );
        let policy = Rules::from_policy(&Retention::default()).unwrap();
        let other = Rules::from_policy(&Retention {
            keep_last: Some(3),
            ..Retention::default()
        })
        .unwrap();
        assert_ne!(
            rules_fingerprint(&policy, None),
            rules_fingerprint(&other, None)
        );
        // The TTL string matters only when the rules are the TTL's.
        assert_eq!(
            rules_fingerprint(&policy, None),
            rules_fingerprint(&policy, Some("720h"))
        );
    }
}
