//! Pure decisions over snapshot lists: which snapshot to restore, and whether an empty
//! source may become the newest backup.

use jiff::{SignedDuration, Timestamp, civil::Date, tz::TimeZone};
use serde::Serialize;

/// What the mover needs to know of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapInfo {
    pub id: String,
    pub time: Timestamp,
    pub host: String,
    pub paths: Vec<String>,
    pub tags: Vec<String>,
    pub files: Option<u64>,
    pub bytes: Option<u64>,
}

/// Which snapshot a restore wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Latest,
    /// A full id or an unambiguous prefix (restic's short ids are 8 characters).
    Id(String),
    /// The newest snapshot taken at or before this time.
    AsOf(Timestamp),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error("no snapshot {0} in the repository (`stowage-mover snapshots` lists them)")]
    UnknownId(String),
    #[error(
        "snapshot id prefix {0} is ambiguous ({1} snapshots start with it): give more characters"
    )]
    Ambiguous(String, usize),
    #[error(
        "no snapshot at or before {0}; the oldest is from {1}: give a later --as-of, or a \
         snapshot id with --snapshot (`stowage-mover snapshots` lists them)"
    )]
    NothingBefore(Timestamp, Timestamp),
}

/// Snapshots of this volume's group: the ones written with `host` (the fixed
/// per-repository host). If none carries it, all of them (a repository written by
/// other tools), so a restore is never empty because of a naming difference.
pub fn group<'a>(snaps: &'a [SnapInfo], host: &str) -> Vec<&'a SnapInfo> {
    let mine: Vec<_> = snaps.iter().filter(|s| s.host == host).collect();
    if mine.is_empty() {
        snaps.iter().collect()
    } else {
        mine
    }
}

/// Picks the snapshot to restore. `Ok(None)`: the repository holds no snapshot.
/// An explicit id is looked up among all snapshots, not only the group's.
pub fn select<'a>(
    snaps: &'a [SnapInfo],
    host: &str,
    sel: &Selector,
) -> Result<Option<&'a SnapInfo>, SelectError> {
    if snaps.is_empty() {
        return match sel {
            Selector::Id(id) => Err(SelectError::UnknownId(id.clone())),
            _ => Ok(None),
        };
    }
    match sel {
        Selector::Latest => Ok(group(snaps, host).into_iter().max_by_key(|s| s.time)),
        Selector::Id(prefix) => {
            let p = prefix.to_ascii_lowercase();
            let hits: Vec<_> = snaps.iter().filter(|s| s.id.starts_with(&p)).collect();
            if let Some(exact) = hits.iter().find(|h| h.id == p) {
                return Ok(Some(exact));
            }
            match hits.len() {
                0 => Err(SelectError::UnknownId(prefix.clone())),
                1 => Ok(Some(hits[0])),
                n => Err(SelectError::Ambiguous(prefix.clone(), n)),
            }
        }
        Selector::AsOf(t) => {
            let g = group(snaps, host);
            let best = g
                .iter()
                .filter(|s| s.time <= *t)
                .max_by_key(|s| s.time)
                .copied();
            match best {
                Some(s) => Ok(Some(s)),
                None => {
                    let oldest = g.iter().map(|s| s.time).min().expect("group is not empty");
                    Err(SelectError::NothingBefore(*t, oldest))
                }
            }
        }
    }
}

/// Parses `--as-of`: an RFC 3339 time (`2026-11-22T18:00:00Z`), a date (`2026-11-22`,
/// meaning the end of that day, UTC), or an age (`24h`, `2d`, `90m`) before `now`.
pub fn parse_as_of(input: &str, now: Timestamp) -> Result<Timestamp, String> {
    let s = input.trim();
    if let Ok(t) = s.parse::<Timestamp>() {
        return Ok(t);
    }
    if let Ok(d) = s.parse::<Date>() {
        let end = d
            .to_datetime(jiff::civil::Time::MAX)
            .to_zoned(TimeZone::UTC)
            .map_err(|e| format!("--as-of {input}: {e}"))?;
        return Ok(end.timestamp());
    }
    let age = s.strip_suffix(" ago").unwrap_or(s);
    if let Ok(d) = age.parse::<SignedDuration>() {
        return now
            .checked_sub(d)
            .map_err(|e| format!("--as-of {input}: {e}"));
    }
    if let Some(days) = age
        .strip_suffix('d')
        .and_then(|n| n.trim().parse::<i64>().ok())
    {
        return now
            .checked_sub(SignedDuration::from_hours(24 * days))
            .map_err(|e| format!("--as-of {input}: {e}"));
    }
    Err(format!(
        "--as-of {input}: not a time. Use RFC 3339 (2026-11-22T18:00:00Z), a date (2026-11-22) \
         or an age (36h, 2d)"
    ))
}

/// The empty-source guard: a volume that came up empty must never become the newest
/// backup of a repository whose latest snapshot holds data.
pub fn refuse_empty_source(source_is_empty: bool, latest_has_data: bool, allowed: bool) -> bool {
    source_is_empty && latest_has_data && !allowed
}

/// The first-backup guard: the newest snapshot of the repository when it has snapshots
/// but none of the PVC with this UID (snapshots without a UID tag, e.g. VolSync's, count
/// as another volume's: safety first, adopting is one annotation).
pub fn foreign_history<'a>(snaps: &'a [SnapInfo], pvc_uid: &str) -> Option<&'a SnapInfo> {
    if snaps.iter().any(|s| {
        stowage_common::tags::tag_value(&s.tags, stowage_common::tags::PVC_UID) == Some(pvc_uid)
    }) {
        return None;
    }
    snaps.iter().max_by_key(|s| s.time)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(id: &str, time: &str, host: &str) -> SnapInfo {
        SnapInfo {
            id: id.into(),
            time: time.parse().unwrap(),
            host: host.into(),
            paths: vec!["/data".into()],
            tags: vec![],
            files: Some(1),
            bytes: Some(1),
        }
    }

    fn list() -> Vec<SnapInfo> {
        vec![
            snap("aaaa1111", "2026-11-20T10:00:00Z", "volsync"),
            snap("aaaa2222", "2026-11-21T10:00:00Z", "volsync"),
            snap("bbbb3333", "2026-11-22T10:00:00Z", "volsync"),
            snap("cccc4444", "2026-11-23T10:00:00Z", "laptop"),
        ]
    }

    #[test]
    fn latest_is_newest_of_the_group() {
        let l = list();
        assert_eq!(
            select(&l, "volsync", &Selector::Latest)
                .unwrap()
                .unwrap()
                .id,
            "bbbb3333"
        );
        assert_eq!(
            select(&l, "laptop", &Selector::Latest).unwrap().unwrap().id,
            "cccc4444"
        );
        // No snapshot of our host: fall back to all of them.
        assert_eq!(
            select(&l, "other", &Selector::Latest).unwrap().unwrap().id,
            "cccc4444"
        );
    }

    #[test]
    fn empty_repository_has_nothing_to_restore() {
        assert_eq!(select(&[], "volsync", &Selector::Latest).unwrap(), None);
        assert!(select(&[], "volsync", &Selector::Id("ab".into())).is_err());
    }

    #[test]
    fn id_prefixes() {
        let l = list();
        assert_eq!(
            select(&l, "volsync", &Selector::Id("bbbb".into()))
                .unwrap()
                .unwrap()
                .id,
            "bbbb3333"
        );
        assert_eq!(
            select(&l, "volsync", &Selector::Id("CCCC4444".into()))
                .unwrap()
                .unwrap()
                .id,
            "cccc4444"
        );
        assert_eq!(
            select(&l, "volsync", &Selector::Id("aaaa".into())).unwrap_err(),
            SelectError::Ambiguous("aaaa".into(), 2)
        );
        assert_eq!(
            select(&l, "volsync", &Selector::Id("dead".into())).unwrap_err(),
            SelectError::UnknownId("dead".into())
        );
    }

    #[test]
    fn as_of_picks_newest_at_or_before() {
        let l = list();
        let at = |s: &str| Selector::AsOf(s.parse().unwrap());
        assert_eq!(
            select(&l, "volsync", &at("2026-11-21T10:00:00Z"))
                .unwrap()
                .unwrap()
                .id,
            "aaaa2222"
        );
        assert_eq!(
            select(&l, "volsync", &at("2026-11-21T09:59:59Z"))
                .unwrap()
                .unwrap()
                .id,
            "aaaa1111"
        );
        assert_eq!(
            select(&l, "volsync", &at("2030-01-01T00:00:00Z"))
                .unwrap()
                .unwrap()
                .id,
            "bbbb3333"
        );
        assert!(matches!(
            select(&l, "volsync", &at("2026-11-01T00:00:00Z")).unwrap_err(),
            SelectError::NothingBefore(..)
        ));
    }

    #[test]
    fn as_of_forms() {
        let now: Timestamp = "2026-11-23T12:00:00Z".parse().unwrap();
        assert_eq!(
            parse_as_of("2026-11-22T18:00:00Z", now).unwrap(),
            "2026-11-22T18:00:00Z".parse().unwrap()
        );
        assert_eq!(
            parse_as_of("2026-11-22", now).unwrap(),
            "2026-11-22T23:59:59.999999999Z".parse().unwrap()
        );
        assert_eq!(
            parse_as_of("36h", now).unwrap(),
            "2026-11-22T00:00:00Z".parse().unwrap()
        );
        assert_eq!(
            parse_as_of("2d", now).unwrap(),
            "2026-11-21T12:00:00Z".parse().unwrap()
        );
        assert_eq!(
            parse_as_of("1d ago", now).unwrap(),
            "2026-11-22T12:00:00Z".parse().unwrap()
        );
        assert!(
            parse_as_of("yesterday-ish", now)
                .unwrap_err()
                .contains("RFC 3339")
        );
    }

    #[test]
    fn empty_source_guard() {
        assert!(refuse_empty_source(true, true, false));
        assert!(!refuse_empty_source(true, true, true), "explicitly allowed");
        assert!(
            !refuse_empty_source(true, false, false),
            "history is empty too"
        );
        assert!(!refuse_empty_source(false, true, false), "source has data");
    }

    #[test]
    fn foreign_history_guard() {
        let mut a = snap("aaaa1111", "2026-11-01T00:00:00Z", "volsync");
        a.tags = vec!["pvc-uid=old".into()];
        let mut b = snap("bbbb2222", "2026-11-02T00:00:00Z", "volsync");
        b.tags = vec!["pvc-uid=old".into()];
        // Empty repository: a first backup is fine.
        assert!(foreign_history(&[], "new").is_none());
        // Only another UID's history: refused, naming the newest.
        assert_eq!(
            foreign_history(&[a.clone(), b.clone()], "new").unwrap().id,
            "bbbb2222"
        );
        // The PVC has history of its own: fine.
        let mut c = snap("cccc3333", "2026-11-03T00:00:00Z", "volsync");
        c.tags = vec!["pvc-uid=new".into()];
        assert!(foreign_history(&[a.clone(), b, c], "new").is_none());
        // Untagged history (VolSync's) counts as foreign.
        let v = snap("dddd4444", "2026-11-01T00:00:00Z", "volsync");
        assert_eq!(foreign_history(&[v], "new").unwrap().id, "dddd4444");
    }
}
