//! What every program reads off a PVC the same way: the policy it is under, the user
//! its mover runs as, its size. One definition, so that the scheduler, gc and prewarm
//! agree by construction (gc must forget by the policy the scheduler backed up under).

use std::collections::BTreeMap;

use super::contract::{self, user};

/// The backup policy a PVC is under: its label `key`, else its namespace's (`None`:
/// namespace unknown); empty and opt-out values (`none`, `off`, ...) on the PVC win
/// over the namespace and mean none.
pub fn policy_of(
    pvc_labels: &BTreeMap<String, String>,
    ns_labels: Option<&BTreeMap<String, String>>,
    key: &str,
) -> Option<String> {
    let value = pvc_labels
        .get(key)
        .or_else(|| ns_labels.and_then(|l| l.get(key)))?;
    let v = value.trim();
    if v.is_empty() || contract::OPT_OUT_VALUES.contains(&v.to_ascii_lowercase().as_str()) {
        return None;
    }
    Some(v.to_string())
}

/// A mover user, `UID` or `UID:GID` (the GID defaults to the UID).
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

/// Bytes of a Kubernetes quantity such as `10Gi`, `500M`, `1.5Pi` or `1e9` (0 if
/// unreadable: sizes only scale deadlines and pick defaults).
pub fn quantity_bytes(q: &str) -> u64 {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, unit) = q.split_at(split);
    let n: f64 = num.parse().unwrap_or(0.0);
    let mult: f64 = match unit {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        u if u.starts_with('e') || u.starts_with('E') => 10f64.powi(u[1..].parse().unwrap_or(0)),
        _ => 0.0,
    };
    (n * mult) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_pvc_label_then_the_namespace_label_and_opt_outs_win() {
        let ns = labels(&[("backup", "daily")]);
        assert_eq!(
            policy_of(&labels(&[("backup", "hourly")]), Some(&ns), "backup").as_deref(),
            Some("hourly")
        );
        assert_eq!(
            policy_of(&labels(&[]), Some(&ns), "backup").as_deref(),
            Some("daily")
        );
        assert_eq!(
            policy_of(&labels(&[("backup", "None")]), Some(&ns), "backup"),
            None
        );
        assert_eq!(
            policy_of(&labels(&[("backup", " ")]), Some(&ns), "backup"),
            None
        );
        assert_eq!(policy_of(&labels(&[]), None, "backup"), None);
        assert_eq!(
            policy_of(&labels(&[("tier", " gold ")]), None, "tier").as_deref(),
            Some("gold")
        );
    }

    #[test]
    fn users_are_uid_or_uid_gid() {
        assert_eq!(parse_user("1000"), Ok((1000, 1000)));
        assert_eq!(parse_user(" 33:44 "), Ok((33, 44)));
        for bad in ["www", "-1", "1:-2", "1:x", ""] {
            let e = parse_user(bad).unwrap_err();
            assert!(e.contains("expected UID or UID:GID"), "{bad}: {e}");
        }
    }

    #[test]
    fn quantities() {
        assert_eq!(quantity_bytes("10Gi"), 10 << 30);
        assert_eq!(quantity_bytes("500M"), 500_000_000);
        assert_eq!(quantity_bytes("1e9"), 1_000_000_000);
        assert_eq!(quantity_bytes("1.5Gi"), 3 << 29);
        assert_eq!(quantity_bytes("2Pi"), 2 << 50);
        assert_eq!(quantity_bytes("1P"), 1_000_000_000_000_000);
        assert_eq!(quantity_bytes("junk"), 0);
    }
}
