//! Which snapshots to keep: restic's `forget --keep-*` rules over plain data, plus
//! stowage's own rule that the newest snapshot of every group is always kept (also when
//! the PVC is gone, also when it is older than every rule allows).
//!
//! Semantics follow restic: snapshots are grouped by host and paths; within a group,
//! newest first, `keep-last n` keeps the n newest, `keep-hourly/daily/weekly/monthly/
//! yearly n` keep the newest snapshot of each of the n most recent periods that have
//! one (UTC calendar), and `keep-within d` keeps every snapshot taken less than `d`
//! before the group's newest snapshot (not before "now": a volume whose backups
//! stopped keeps its history).
//!
//! One rule is stowage's own: the TTL of snapshots made by hand. A PVC without a
//! backup policy is backed up only by hand (the scheduler starts nothing for it), so its
//! snapshots carry no policy: each is kept for a TTL after it was taken (measured from
//! "now", unlike `keep-within`), and the newest stays however old it is.

use std::collections::BTreeMap;

use jiff::tz::TimeZone;
use jiff::{Span, Timestamp};
use stowage_common::k8s::policy::{Retention, parse_keep_within};

/// What retention needs to know about one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snap {
    pub id: String,
    pub time: Timestamp,
    /// Retention group (restic's default: host and paths).
    pub group: String,
}

/// The group key restic uses by default.
pub fn group_key(host: &str, paths: &[String]) -> String {
    let mut p = paths.to_vec();
    p.sort();
    format!("{host}:{}", p.join(","))
}

/// Parsed retention rules.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub within: Option<Span>,
    pub last: u32,
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
    /// Snapshots taken after this time are kept (the TTL of manual backups, as
    /// `now - ttl`).
    pub taken_after: Option<Timestamp>,
}

impl Rules {
    /// The rules for a PVC without a backup policy: each snapshot lives `ttl` after it
    /// was taken (`ttl` is a restic duration such as `720h`); the newest always stays.
    pub fn manual_ttl(ttl: &str, now: Timestamp) -> Result<Self, String> {
        let span = parse_keep_within(ttl)?;
        let cutoff = now
            .to_zoned(TimeZone::UTC)
            .checked_sub(span)
            .map_err(|e| format!("TTL {ttl:?}: {e}"))?
            .timestamp();
        Ok(Self {
            taken_after: Some(cutoff),
            ..Self::default()
        })
    }

    pub fn from_policy(r: &Retention) -> Result<Self, String> {
        Ok(Self {
            within: r
                .keep_within
                .as_deref()
                .map(parse_keep_within)
                .transpose()?,
            last: r.keep_last.unwrap_or(0),
            hourly: r.keep_hourly.unwrap_or(0),
            daily: r.keep_daily.unwrap_or(0),
            weekly: r.keep_weekly.unwrap_or(0),
            monthly: r.keep_monthly.unwrap_or(0),
            yearly: r.keep_yearly.unwrap_or(0),
            taken_after: None,
        })
    }

    /// No rule at all: nothing may be forgotten (never read an empty policy as
    /// "keep nothing").
    pub fn is_empty(&self) -> bool {
        self.within.is_none()
            && self.last == 0
            && self.hourly == 0
            && self.daily == 0
            && self.weekly == 0
            && self.monthly == 0
            && self.yearly == 0
            && self.taken_after.is_none()
    }
}

/// The verdict on one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub id: String,
    pub time: Timestamp,
    pub keep: bool,
    /// Why it is kept (`newest`, `last`, `hourly`, ..., `within`, `no rules`).
    pub reasons: Vec<&'static str>,
}

type Bucket = fn(&jiff::Zoned) -> i64;

fn hour(z: &jiff::Zoned) -> i64 {
    day(z) * 24 + i64::from(z.hour())
}
fn day(z: &jiff::Zoned) -> i64 {
    i64::from(z.year()) * 10_000 + i64::from(z.month()) * 100 + i64::from(z.day())
}
fn week(z: &jiff::Zoned) -> i64 {
    let w = z.date().iso_week_date();
    i64::from(w.year()) * 100 + i64::from(w.week())
}
fn month(z: &jiff::Zoned) -> i64 {
    i64::from(z.year()) * 100 + i64::from(z.month())
}
fn year(z: &jiff::Zoned) -> i64 {
    i64::from(z.year())
}

/// Decides every snapshot. The result is ordered by group, then newest first.
pub fn decide(snaps: &[Snap], rules: &Rules) -> Vec<Verdict> {
    let mut groups: BTreeMap<&str, Vec<&Snap>> = BTreeMap::new();
    for s in snaps {
        groups.entry(s.group.as_str()).or_default().push(s);
    }
    let mut out = Vec::with_capacity(snaps.len());
    for (_, mut group) in groups {
        group.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.id.cmp(&a.id)));
        let newest = group[0].time;
        let cutoff = rules.within.and_then(|w| {
            newest
                .to_zoned(TimeZone::UTC)
                .checked_sub(w)
                .ok()
                .map(|z| z.timestamp())
        });
        let mut last_left = rules.last;
        let mut buckets: [(u32, Bucket, &'static str, Option<i64>); 5] = [
            (rules.hourly, hour, "hourly", None),
            (rules.daily, day, "daily", None),
            (rules.weekly, week, "weekly", None),
            (rules.monthly, month, "monthly", None),
            (rules.yearly, year, "yearly", None),
        ];
        for (i, s) in group.iter().enumerate() {
            let mut reasons = Vec::new();
            if i == 0 {
                reasons.push("newest");
            }
            if rules.is_empty() {
                reasons.push("no rules");
            }
            if last_left > 0 {
                last_left -= 1;
                reasons.push("last");
            }
            let z = s.time.to_zoned(TimeZone::UTC);
            for (left, bucket, name, seen) in buckets.iter_mut() {
                let b = bucket(&z);
                if *left > 0 && *seen != Some(b) {
                    *left -= 1;
                    *seen = Some(b);
                    reasons.push(name);
                }
            }
            if cutoff.is_some_and(|c| s.time > c) {
                reasons.push("within");
            }
            if rules.taken_after.is_some_and(|c| s.time > c) {
                reasons.push("ttl");
            }
            out.push(Verdict {
                id: s.id.clone(),
                time: s.time,
                keep: !reasons.is_empty(),
                reasons,
            });
        }
    }
    out
}

/// When `rules` forget more of these snapshots without a new one arriving: only the
/// manual-backup TTL counts from now (every other rule counts from the snapshots), so
/// the first snapshot kept by nothing but the TTL is due then. `None`: never (until
/// the listing changes).
pub fn next_expiry(verdicts: &[Verdict], rules: &Rules, now: Timestamp) -> Option<Timestamp> {
    let cutoff = rules.taken_after?;
    let ttl = now.duration_since(cutoff);
    verdicts
        .iter()
        .filter(|v| v.keep && v.reasons == ["ttl"])
        .map(|v| v.time)
        .min()
        .and_then(|t| t.checked_add(ttl).ok())
}

/// Ids of the snapshots to forget.
pub fn to_forget(verdicts: &[Verdict]) -> Vec<String> {
    verdicts
        .iter()
        .filter(|v| !v.keep)
        .map(|v| v.id.clone())
        .collect()
}

/// The limit on how much one retention run may forget at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForgetLimit {
    /// Hold back a run that would forget more than this percentage of the
    /// repository's snapshots (100: never).
    pub max_percent: u32,
    /// Runs that forget fewer snapshots than this are never held back.
    pub min_count: usize,
}

/// A confirmation of a held-back retention, as the user gave it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Confirmation {
    /// The value given (annotation `stowage.io/confirm-forget` or `--confirm-forget`):
    /// the number of snapshots the user agrees to forget at once.
    pub given: Option<String>,
    /// The value a run already used for this repository (confirmations are good for
    /// one run: a later hold needs a new one).
    pub used: Option<String>,
}

/// What a retention run may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForgetDecision {
    /// Within the limit (or nothing to forget).
    Proceed,
    /// Over the limit, and confirmed by this value (record it as used).
    Confirmed(String),
    /// Over the limit: forget nothing; `why` says what was found and how to confirm.
    Blocked {
        forget: usize,
        total: usize,
        why: String,
    },
}

/// Whether a run that would forget `forget` of the repository's `total` snapshots may
/// go ahead. Over the limit it needs a confirmation of at least `forget` (the count
/// the hold reported; more allows for the few a later pass adds), not used before.
/// `confirm_how` names the way to confirm, for the message.
pub fn forget_decision(
    forget: usize,
    total: usize,
    limit: &ForgetLimit,
    confirmation: &Confirmation,
    confirm_how: &str,
) -> ForgetDecision {
    let over = forget >= limit.min_count.max(1)
        && (forget as u128) * 100 > u128::from(limit.max_percent) * (total as u128);
    if !over {
        return ForgetDecision::Proceed;
    }
    let given = confirmation.given.as_deref().map(str::trim);
    let problem = match given {
        None | Some("") => String::new(),
        Some(v) if confirmation.used.as_deref() == Some(v) => {
            format!(" The confirmation {v:?} was used by an earlier run: give the new count.")
        }
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n >= forget => return ForgetDecision::Confirmed(v.to_string()),
            Ok(n) => format!(" The confirmation {n} is less than {forget}."),
            Err(_) => format!(" The confirmation {v:?} is not a number of snapshots."),
        },
    };
    ForgetDecision::Blocked {
        forget,
        total,
        why: format!(
            "retention would forget {forget} of {total} snapshots at once, more than \
             {}% (STOWAGE_FORGET_MAX_PERCENT): nothing was forgotten. If the policy is \
             meant (not a mistaken edit, no clock far off), confirm with {confirm_how}={forget}.{problem}",
            limit.max_percent
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn snaps(times: &[&str]) -> Vec<Snap> {
        times
            .iter()
            .enumerate()
            .map(|(i, s)| Snap {
                id: format!("s{i:02}"),
                time: t(s),
                group: "volsync:/data".into(),
            })
            .collect()
    }

    fn kept(v: &[Verdict]) -> Vec<String> {
        let mut k: Vec<String> = v.iter().filter(|v| v.keep).map(|v| v.id.clone()).collect();
        k.sort();
        k
    }

    fn rules(r: Retention) -> Rules {
        Rules::from_policy(&r).unwrap()
    }

    fn none() -> Retention {
        Retention {
            keep_within: None,
            ..Retention::default()
        }
    }

    #[test]
    fn default_policy_keeps_thirty_days_before_the_newest() {
        let s = snaps(&[
            "2026-03-31T00:00:00Z", // newest
            "2026-03-01T00:00:01Z", // 29d 23:59:59 before: within
            "2026-03-01T00:00:00Z", // exactly 720h before: the edge is not within
            "2026-02-01T00:00:00Z",
        ]);
        let v = decide(&s, &rules(Retention::default()));
        assert_eq!(kept(&v), vec!["s00", "s01"]);
        assert_eq!(to_forget(&v), vec!["s02", "s03"]);
    }

    #[test]
    fn single_snapshot_older_than_ttl_is_kept() {
        let s = snaps(&["2020-01-01T00:00:00Z"]);
        let v = decide(&s, &rules(Retention::default()));
        assert!(v[0].keep);
        assert_eq!(v[0].reasons, vec!["newest", "within"]);
        // Even with a rule that keeps nothing by time.
        let v = decide(
            &s,
            &rules(Retention {
                keep_within: Some("1h".into()),
                ..none()
            }),
        );
        assert!(v[0].keep, "{v:?}");
    }

    #[test]
    fn newest_is_kept_although_no_rule_matches() {
        // keep-hourly 0, keep-daily 0 etc.: only a keep-within that the others miss.
        let s = snaps(&["2026-01-10T00:00:00Z", "2026-01-01T00:00:00Z"]);
        let v = decide(
            &s,
            &rules(Retention {
                keep_within: Some("1h".into()),
                ..none()
            }),
        );
        assert_eq!(kept(&v), vec!["s00"]);
    }

    #[test]
    fn keep_rules_combine() {
        // Hourly backups for three days.
        let mut times = Vec::new();
        for d in 1..=3 {
            for h in 0..24 {
                times.push(format!("2026-05-0{d}T{h:02}:30:00Z"));
            }
        }
        let refs: Vec<&str> = times.iter().map(String::as_str).collect();
        let s = snaps(&refs);
        let v = decide(
            &s,
            &rules(Retention {
                keep_last: Some(2),
                keep_hourly: Some(6),
                keep_daily: Some(3),
                ..none()
            }),
        );
        let k: Vec<Timestamp> = v.iter().filter(|v| v.keep).map(|v| v.time).collect();
        // 6 newest hours (covers last 2), plus the newest of May 2 and May 1.
        assert_eq!(k.len(), 8, "{k:?}");
        assert!(k.contains(&t("2026-05-03T18:30:00Z")));
        assert!(!k.contains(&t("2026-05-03T17:30:00Z")));
        assert!(k.contains(&t("2026-05-02T23:30:00Z")));
        assert!(k.contains(&t("2026-05-01T23:30:00Z")));
        let newest = v
            .iter()
            .find(|v| v.time == t("2026-05-03T23:30:00Z"))
            .unwrap();
        assert_eq!(newest.reasons, vec!["newest", "last", "hourly", "daily"]);
    }

    #[test]
    fn weekly_monthly_yearly_use_calendar_periods() {
        let s = snaps(&[
            "2026-06-15T00:00:00Z",
            "2026-06-14T00:00:00Z", // previous ISO week (Sunday)
            "2026-06-01T00:00:00Z", // same month as the first
            "2026-05-20T00:00:00Z",
            "2025-12-31T00:00:00Z",
            "2024-01-01T00:00:00Z",
        ]);
        let v = decide(
            &s,
            &rules(Retention {
                keep_weekly: Some(2),
                keep_monthly: Some(2),
                keep_yearly: Some(3),
                ..none()
            }),
        );
        assert_eq!(kept(&v), vec!["s00", "s01", "s03", "s04", "s05"]);
    }

    #[test]
    fn groups_are_decided_separately_each_keeps_its_newest() {
        let mut s = snaps(&["2026-01-10T00:00:00Z", "2026-01-09T00:00:00Z"]);
        s.push(Snap {
            id: "other".into(),
            time: t("2025-01-01T00:00:00Z"),
            group: "volsync:/other".into(),
        });
        let v = decide(
            &s,
            &rules(Retention {
                keep_last: Some(1),
                ..none()
            }),
        );
        assert_eq!(kept(&v), vec!["other", "s00"]);
    }

    #[test]
    fn pvc_gone_default_policy_keeps_its_newest_forever() {
        // A repository whose PVC was deleted a year ago: default retention applies
        // relative to its newest snapshot, so its last month of history stays.
        let s = snaps(&[
            "2025-01-31T00:00:00Z",
            "2025-01-20T00:00:00Z",
            "2024-12-01T00:00:00Z",
        ]);
        let v = decide(&s, &rules(Retention::default()));
        assert_eq!(kept(&v), vec!["s00", "s01"]);
    }

    #[test]
    fn no_rules_keep_everything() {
        let s = snaps(&["2026-01-10T00:00:00Z", "2020-01-09T00:00:00Z"]);
        let v = decide(&s, &rules(none()));
        assert!(to_forget(&v).is_empty());
    }

    #[test]
    fn bad_duration_is_an_error() {
        assert!(
            Rules::from_policy(&Retention {
                keep_within: Some("forever".into()),
                ..none()
            })
            .is_err()
        );
    }

    #[test]
    fn manual_backups_live_for_their_ttl_from_now_and_the_newest_stays() {
        let now = t("2026-06-30T12:00:00Z");
        let r = Rules::manual_ttl("720h", now).unwrap();
        // Three manual backups a week apart: all within 30 days of now.
        let s = snaps(&[
            "2026-06-29T00:00:00Z",
            "2026-06-22T00:00:00Z",
            "2026-05-31T12:00:01Z", // 29d 23:59:59 before now: still alive
            "2026-05-31T12:00:00Z", // exactly 720h before now: expired (edge excluded)
            "2026-04-01T00:00:00Z",
        ]);
        let v = decide(&s, &r);
        assert_eq!(kept(&v), vec!["s00", "s01", "s02"]);
        assert_eq!(v[0].reasons, vec!["newest", "ttl"]);
        assert_eq!(to_forget(&v), vec!["s03", "s04"]);
    }

    #[test]
    fn manual_ttl_measures_from_now_not_from_the_newest() {
        // keep-within would keep both (they are a day apart); the TTL expires the older
        // one because it was taken more than 30 days ago, and keeps the newest although
        // it expired too: the last backup of a volume is never forgotten.
        let now = t("2026-06-30T00:00:00Z");
        let s = snaps(&["2026-03-02T00:00:00Z", "2026-03-01T00:00:00Z"]);
        let v = decide(&s, &Rules::manual_ttl("30d", now).unwrap());
        assert_eq!(kept(&v), vec!["s00"]);
        assert_eq!(v[0].reasons, vec!["newest"]);
        let within = decide(&s, &rules(Retention::default()));
        assert_eq!(kept(&within), vec!["s00", "s01"]);
        // A single old manual backup is kept.
        let one = snaps(&["2020-01-01T00:00:00Z"]);
        assert!(decide(&one, &Rules::manual_ttl("1h", now).unwrap())[0].keep);
        // A TTL is a rule: it never reads as "no rules, keep everything".
        assert!(!Rules::manual_ttl("1h", now).unwrap().is_empty());
        assert!(Rules::manual_ttl("soon", now).is_err());
    }

    #[test]
    fn the_manual_ttl_says_when_retention_forgets_more() {
        let now = t("2026-06-30T12:00:00Z");
        let r = Rules::manual_ttl("720h", now).unwrap();
        let s = snaps(&[
            "2026-06-29T00:00:00Z", // newest: never expires by time
            "2026-06-22T00:00:00Z", // kept by the TTL only: expires 720h after it
            "2026-06-01T00:00:00Z", // kept by the TTL only: expires first
            "2026-04-01T00:00:00Z", // forgotten now
        ]);
        let v = decide(&s, &r);
        assert_eq!(next_expiry(&v, &r, now), Some(t("2026-07-01T00:00:00Z")));
        // Rules that count from the snapshots change only with a new snapshot.
        let within = rules(Retention::default());
        assert_eq!(next_expiry(&decide(&s, &within), &within, now), None);
        // Only the newest left: nothing more to forget by time.
        let one = snaps(&["2026-06-29T00:00:00Z"]);
        assert_eq!(next_expiry(&decide(&one, &r), &r, now), None);
    }

    #[test]
    fn empty_list_decides_nothing() {
        assert!(decide(&[], &rules(Retention::default())).is_empty());
    }

    const LIMIT: ForgetLimit = ForgetLimit {
        max_percent: 50,
        min_count: 5,
    };

    fn confirm(given: Option<&str>, used: Option<&str>) -> Confirmation {
        Confirmation {
            given: given.map(str::to_string),
            used: used.map(str::to_string),
        }
    }

    fn blocked(d: &ForgetDecision) -> bool {
        matches!(d, ForgetDecision::Blocked { .. })
    }

    #[test]
    fn forgetting_up_to_the_share_proceeds_more_is_blocked() {
        let none = Confirmation::default();
        let how = "the annotation stowage.io/confirm-forget";
        // Exactly half: within the limit; one more: held back.
        assert_eq!(
            forget_decision(10, 20, &LIMIT, &none, how),
            ForgetDecision::Proceed
        );
        let d = forget_decision(11, 20, &LIMIT, &none, how);
        let ForgetDecision::Blocked { forget, total, why } = &d else {
            panic!("{d:?}")
        };
        assert_eq!((*forget, *total), (11, 20));
        assert!(
            why.contains("11 of 20") && why.contains("stowage.io/confirm-forget=11"),
            "{why}"
        );
        // Steady state of the shipped hourly policy: one of ~41 snapshots per pass.
        assert_eq!(
            forget_decision(1, 41, &LIMIT, &none, how),
            ForgetDecision::Proceed
        );
        // Below the minimum count the share does not matter: 4 of 5 goes ahead...
        assert_eq!(
            forget_decision(4, 5, &LIMIT, &none, how),
            ForgetDecision::Proceed
        );
        // ...5 of 6 does not.
        assert!(blocked(&forget_decision(5, 6, &LIMIT, &none, how)));
        // 100 %: never held back (the newest always stays, so less is forgotten).
        let off = ForgetLimit {
            max_percent: 100,
            ..LIMIT
        };
        assert_eq!(
            forget_decision(99, 100, &off, &none, how),
            ForgetDecision::Proceed
        );
        // 0 %: every run from the minimum count on needs a confirmation.
        let strict = ForgetLimit {
            max_percent: 0,
            min_count: 1,
        };
        assert!(blocked(&forget_decision(1, 1000, &strict, &none, how)));
        assert_eq!(
            forget_decision(0, 1000, &strict, &none, how),
            ForgetDecision::Proceed
        );
    }

    #[test]
    fn a_confirmation_of_at_least_the_count_not_used_before_lets_it_through() {
        let how = "--confirm-forget bk/a/data";
        assert_eq!(
            forget_decision(30, 40, &LIMIT, &confirm(Some("30"), None), how),
            ForgetDecision::Confirmed("30".into())
        );
        // More than the count: the few a later pass adds are covered.
        assert_eq!(
            forget_decision(30, 40, &LIMIT, &confirm(Some(" 32 "), Some("12")), how),
            ForgetDecision::Confirmed("32".into())
        );
        // Less than the count, garbage, or a confirmation an earlier run used: held.
        for (given, used, says) in [
            ("29", None, "less than 30"),
            ("yes", None, "not a number"),
            ("30", Some("30"), "used by an earlier run"),
        ] {
            let d = forget_decision(30, 40, &LIMIT, &confirm(Some(given), used), how);
            let ForgetDecision::Blocked { why, .. } = &d else {
                panic!("{given}: {d:?}")
            };
            assert!(why.contains(says), "{given}: {why}");
            assert!(why.contains("--confirm-forget bk/a/data=30"), "{why}");
        }
        // Within the limit a confirmation changes nothing (and is not used up).
        assert_eq!(
            forget_decision(1, 40, &LIMIT, &confirm(Some("30"), None), how),
            ForgetDecision::Proceed
        );
    }

    #[test]
    fn a_snapshot_from_a_clock_far_ahead_is_held_back_and_the_newest_stays() {
        // A mover whose clock ran years ahead: `keepWithin` counts back from that
        // snapshot, so every real one falls out of the window at once.
        let mut times = vec!["2036-01-01T00:00:00Z".to_string()];
        for d in 1..=20 {
            times.push(format!("2026-05-{d:02}T02:30:00Z"));
        }
        let refs: Vec<&str> = times.iter().map(String::as_str).collect();
        let s = snaps(&refs);
        let v = decide(&s, &rules(Retention::default()));
        let forget = to_forget(&v);
        assert_eq!(forget.len(), 20);
        assert!(!forget.contains(&"s00".to_string()), "the newest stays");
        let d = forget_decision(forget.len(), s.len(), &LIMIT, &Confirmation::default(), "x");
        assert!(blocked(&d), "{d:?}");
        // Even a decision that forgets all it may never reaches the newest snapshot
        // of a group: the guard only ever holds back, it never adds to the list.
        let all_but = decide(
            &s,
            &rules(Retention {
                keep_within: Some("1h".into()),
                ..none()
            }),
        );
        assert_eq!(kept(&all_but), vec!["s00"]);
    }
}
