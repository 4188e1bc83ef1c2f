//! The policies ConfigMap: one YAML document (key `policies.yaml`) mapping a policy
//! name (the value of a PVC's `backup` label) to its schedule, retention and limits.
//!
//! ```yaml
//! hourly:
//!   schedule: "@hourly"
//!   retention: { keepWithin: 720h, keepHourly: 24, keepDaily: 7 }
//! nightly:
//!   schedule: "30 2 * * *"
//!   limits: { moverMemory: 1Gi, jobDeadline: 12h }
//! ```
//!
//! Each policy is parsed on its own: one broken policy gives an error for the PVCs
//! that use it (an Event), the others go on.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::schedule::Schedule;

/// One backup policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    /// Standard 5-field crontab expression or `@hourly`/`@daily`/... (UTC).
    pub schedule: Schedule,
    #[serde(default)]
    pub retention: Retention,
    #[serde(default)]
    pub limits: Limits,
}

/// What gc keeps (restic's `forget --keep-*` rules). The newest snapshot of every
/// repository is always kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retention {
    /// Keep every snapshot younger than this (restic duration: `720h`, `30d`, `1y2m`).
    pub keep_within: Option<String>,
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
}

/// Default retention: everything of the last 30 days.
pub const DEFAULT_KEEP_WITHIN: &str = "720h";

impl Default for Retention {
    fn default() -> Self {
        Self {
            keep_within: Some(DEFAULT_KEEP_WITHIN.into()),
            keep_last: None,
            keep_hourly: None,
            keep_daily: None,
            keep_weekly: None,
            keep_monthly: None,
            keep_yearly: None,
        }
    }
}

/// Optional per-policy limits for the mover Jobs of its PVCs (PVC annotations win).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Memory request and limit, e.g. `1Gi`.
    pub mover_memory: Option<String>,
    /// CPU request, e.g. `250m`.
    pub mover_cpu: Option<String>,
    /// Upload limit in KiB/s (restic's `--limit-upload`).
    pub upload_kib_per_sec: Option<u64>,
    /// How long a mover Job may run (`12h`, `90m`, `2d`; the Job's
    /// activeDeadlineSeconds) instead of the computed default
    /// ([`crate::k8s::mover_job::active_deadline_for`]): a first backup over a slow
    /// uplink needs more. The PVC annotation `stowage.io/mover-deadline` wins.
    pub job_deadline: Option<String>,
}

/// The parsed ConfigMap: good policies, and an error text per broken one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policies {
    pub valid: BTreeMap<String, Policy>,
    pub invalid: BTreeMap<String, String>,
}

/// Why a PVC's policy cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyProblem {
    /// No policy of that name.
    Unknown { known: Vec<String> },
    /// The policy exists but does not parse (bad schedule, typo in a field).
    Invalid(String),
}

impl Policies {
    /// Parses the `policies.yaml` document. Only a document that is not a mapping at
    /// all is an error; bad policies are collected in `invalid`.
    pub fn parse(doc: &str) -> Result<Self, String> {
        let raw: BTreeMap<String, serde_json::Value> = if doc.trim().is_empty() {
            BTreeMap::new()
        } else {
            serde_saphyr::from_str(doc).map_err(|e| {
                format!("the policies document is not a YAML mapping of policy name to policy: {e}")
            })?
        };
        let mut out = Policies::default();
        for (name, value) in raw {
            match serde_json::from_value::<Policy>(value).map_err(|e| e.to_string()) {
                Ok(p) => match p.check() {
                    Ok(()) => {
                        out.valid.insert(name, p);
                    }
                    Err(e) => {
                        out.invalid.insert(name, e);
                    }
                },
                Err(e) => {
                    out.invalid.insert(name, e);
                }
            }
        }
        Ok(out)
    }

    /// The policy called `name`, or why it cannot be used.
    pub fn get(&self, name: &str) -> Result<&Policy, PolicyProblem> {
        if let Some(p) = self.valid.get(name) {
            return Ok(p);
        }
        if let Some(e) = self.invalid.get(name) {
            return Err(PolicyProblem::Invalid(e.clone()));
        }
        Err(PolicyProblem::Unknown {
            known: self.valid.keys().cloned().collect(),
        })
    }
}

impl Policy {
    /// Checks what serde cannot: durations parse.
    fn check(&self) -> Result<(), String> {
        if let Some(w) = &self.retention.keep_within {
            parse_keep_within(w)?;
        }
        if let Some(d) = &self.limits.job_deadline {
            parse_job_deadline(d).map_err(|e| format!("limits.jobDeadline: {e}"))?;
        }
        Ok(())
    }
}

/// Longest mover deadline accepted (a week): longer is a typo, and the Job's lock on the
/// repository would block every other run for that long.
pub const MAX_JOB_DEADLINE_SECS: u64 = 7 * 24 * 3600;

/// Parses a mover deadline (`12h`, `90m`, `1d12h`, `3600s`: numbers with the units d,
/// h, m, s) into seconds, between a minute and [`MAX_JOB_DEADLINE_SECS`].
pub fn parse_job_deadline(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "{s:?} is not a duration: expected numbers with units d, h, m or s, such as 12h, \
             90m or 1d12h"
        )
    };
    let mut total: u64 = 0;
    let mut num = String::new();
    let mut any = false;
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().map_err(|_| bad())?;
        num.clear();
        let unit = match c {
            'd' => 86_400,
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(bad()),
        };
        total = n
            .checked_mul(unit)
            .and_then(|x| total.checked_add(x))
            .ok_or_else(bad)?;
        any = true;
    }
    if !num.is_empty() || !any {
        return Err(bad());
    }
    if !(60..=MAX_JOB_DEADLINE_SECS).contains(&total) {
        return Err(format!(
            "{s:?} is outside the accepted range of 1m to {}d",
            MAX_JOB_DEADLINE_SECS / 86_400
        ));
    }
    Ok(total)
}

/// Parses a restic-style duration (`720h`, `30d`, `1y2m3d4h`) into a calendar span.
pub fn parse_keep_within(s: &str) -> Result<jiff::Span, String> {
    let bad = || {
        format!(
            "keepWithin {s:?} is not a duration: expected a number and a unit (y, m, d, h), \
             such as 720h or 30d or 1y6m"
        )
    };
    let mut span = jiff::Span::new();
    let mut num = String::new();
    let mut any = false;
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: i64 = num.parse().map_err(|_| bad())?;
        num.clear();
        span = match c {
            'y' => span.try_years(n),
            'm' => span.try_months(n),
            'd' => span.try_days(n),
            'h' => span.try_hours(n),
            _ => return Err(bad()),
        }
        .map_err(|_| bad())?;
        any = true;
    }
    if !num.is_empty() || !any {
        return Err(bad());
    }
    Ok(span)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"
hourly:
  schedule: "@hourly"
  retention: { keepWithin: 720h, keepHourly: 24, keepDaily: 7 }
nightly:
  schedule: "30 2 * * *"
  limits: { moverMemory: 1Gi, moverCpu: 250m }
broken:
  schedule: "0 3 * * 8"
typo:
  schedule: "@daily"
  retension: {}
badttl:
  schedule: "@daily"
  retention: { keepWithin: forever }
"#;

    #[test]
    fn parses_good_policies_and_isolates_bad_ones() {
        let p = Policies::parse(DOC).unwrap();
        assert_eq!(
            p.valid.keys().collect::<Vec<_>>(),
            vec!["hourly", "nightly"]
        );
        let hourly = p.get("hourly").unwrap();
        assert_eq!(hourly.schedule.to_string(), "@hourly");
        assert_eq!(hourly.retention.keep_hourly, Some(24));
        assert_eq!(hourly.retention.keep_within.as_deref(), Some("720h"));
        let nightly = p.get("nightly").unwrap();
        assert_eq!(nightly.retention, Retention::default());
        assert_eq!(nightly.limits.mover_memory.as_deref(), Some("1Gi"));

        match p.get("broken") {
            Err(PolicyProblem::Invalid(e)) => assert!(e.contains("day-of-week"), "{e}"),
            other => panic!("{other:?}"),
        }
        match p.get("typo") {
            Err(PolicyProblem::Invalid(e)) => assert!(e.contains("retension"), "{e}"),
            other => panic!("{other:?}"),
        }
        match p.get("badttl") {
            Err(PolicyProblem::Invalid(e)) => assert!(e.contains("forever"), "{e}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            p.get("weekly"),
            Err(PolicyProblem::Unknown {
                known: vec!["hourly".into(), "nightly".into()]
            })
        );
    }

    #[test]
    fn job_deadline_is_a_duration_and_a_bad_one_invalidates_the_policy() {
        let p = Policies::parse(
            "slow: {schedule: \"@daily\", limits: {jobDeadline: 12h}}\n\
             typo: {schedule: \"@daily\", limits: {jobDeadline: 12hours}}\n\
             zero: {schedule: \"@daily\", limits: {jobDeadline: 0h}}\n",
        )
        .unwrap();
        assert_eq!(
            p.get("slow").unwrap().limits.job_deadline.as_deref(),
            Some("12h")
        );
        for name in ["typo", "zero"] {
            match p.get(name) {
                Err(PolicyProblem::Invalid(e)) => assert!(e.contains("jobDeadline"), "{e}"),
                other => panic!("{name}: {other:?}"),
            }
        }
        assert_eq!(parse_job_deadline("12h"), Ok(12 * 3600));
        assert_eq!(
            parse_job_deadline("1d12h30m"),
            Ok(86_400 + 12 * 3600 + 1800)
        );
        assert_eq!(parse_job_deadline(" 90m "), Ok(5400));
        assert_eq!(parse_job_deadline("3600s"), Ok(3600));
        for bad in [
            "",
            "12",
            "h",
            "12x",
            "-1h",
            "30s",
            "8d",
            "99999999999999999999d",
        ] {
            assert!(parse_job_deadline(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn empty_and_non_mapping_documents() {
        assert_eq!(Policies::parse("").unwrap(), Policies::default());
        assert!(Policies::parse("- a\n- b\n").is_err());
    }

    #[test]
    fn keep_within_durations() {
        assert_eq!(parse_keep_within("720h").unwrap().get_hours(), 720);
        let s = parse_keep_within("1y2m3d4h").unwrap();
        assert_eq!(
            (s.get_years(), s.get_months(), s.get_days(), s.get_hours()),
            (1, 2, 3, 4)
        );
        for bad in ["", "h", "30", "3x", "-1d", "forever"] {
            assert!(parse_keep_within(bad).is_err(), "{bad}");
        }
    }
}
