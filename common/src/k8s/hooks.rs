//! Pre- and post-backup hooks declared on the app pod with Velero's annotations
//! (`pre.hook.backup.velero.io/command` ... and the `post.` twins), with Velero's
//! meanings and defaults: the command is a JSON array (or one plain string, run as a
//! single argument, not through a shell), the container defaults to the pod's first,
//! `on-error` is `Fail` (default) or `Continue`, `timeout` a Go duration (default 30s).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::contract::consistency::velero;

/// Velero's default hook timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Pre,
    Post,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pre => "pre",
            Phase::Post => "post",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum OnError {
    #[default]
    Fail,
    Continue,
}

/// One hook of one pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hook {
    pub phase: Phase,
    pub command: Vec<String>,
    /// Container to run in (resolved: the annotation, else the pod's first container).
    pub container: String,
    pub on_error: OnError,
    #[serde(with = "secs")]
    pub timeout: Duration,
}

mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs_f64(f64::deserialize(d)?.max(0.0)))
    }
}

/// The hook of `phase` declared by a pod's annotations; `Ok(None)` without a command.
/// `containers` are the pod's container names, in order.
pub fn pod_hook(
    annotations: &BTreeMap<String, String>,
    containers: &[String],
    phase: Phase,
) -> Result<Option<Hook>, String> {
    let (cmd_key, container_key, on_error_key, timeout_key) = match phase {
        Phase::Pre => (
            velero::PRE_COMMAND,
            velero::PRE_CONTAINER,
            velero::PRE_ON_ERROR,
            velero::PRE_TIMEOUT,
        ),
        Phase::Post => (
            velero::POST_COMMAND,
            velero::POST_CONTAINER,
            velero::POST_ON_ERROR,
            velero::POST_TIMEOUT,
        ),
    };
    let Some(raw) = annotations.get(cmd_key).filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    let command = parse_command(raw).map_err(|e| format!("{cmd_key}: {e}"))?;
    let container = match annotations.get(container_key).filter(|v| !v.is_empty()) {
        Some(c) if containers.is_empty() || containers.contains(c) => c.clone(),
        Some(c) => {
            return Err(format!(
                "{container_key}: the pod has no container {c:?} (it has {})",
                containers.join(", ")
            ));
        }
        None => containers
            .first()
            .cloned()
            .ok_or_else(|| "the pod has no container".to_string())?,
    };
    let on_error = match annotations.get(on_error_key).map(|v| v.trim()) {
        None | Some("") => OnError::Fail,
        Some(v) if v.eq_ignore_ascii_case("fail") => OnError::Fail,
        Some(v) if v.eq_ignore_ascii_case("continue") => OnError::Continue,
        Some(v) => {
            return Err(format!(
                "{on_error_key}: {v:?} is neither Fail nor Continue"
            ));
        }
    };
    let timeout = match annotations.get(timeout_key).map(|v| v.trim()) {
        None | Some("") => DEFAULT_TIMEOUT,
        Some(v) => parse_go_duration(v).map_err(|e| format!("{timeout_key}: {e}"))?,
    };
    Ok(Some(Hook {
        phase,
        command,
        container,
        on_error,
        timeout,
    }))
}

/// A JSON array of strings, or one plain string (a single argument, as in Velero).
pub fn parse_command(raw: &str) -> Result<Vec<String>, String> {
    let t = raw.trim();
    if t.starts_with('[') {
        let v: Vec<String> = serde_json::from_str(t).map_err(|e| {
            format!(
                "{t:?} is not a JSON array of strings ({e}), e.g. [\"/bin/sh\", \"-c\", \"sync\"]"
            )
        })?;
        if v.is_empty() || v[0].is_empty() {
            return Err("the command is empty".into());
        }
        return Ok(v);
    }
    Ok(vec![t.to_string()])
}

/// A Go duration (`30s`, `1m30s`, `2h`, `500ms`, `1.5m`); a bare number is seconds.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (e.g. 30s, 2m, 1m30s)");
    let s = s.trim();
    if let Ok(n) = s.parse::<f64>() {
        return (n >= 0.0)
            .then(|| Duration::from_secs_f64(n))
            .ok_or_else(bad);
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let n: f64 = rest[..num_end].parse().map_err(|_| bad())?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += n * mult;
        rest = &rest[unit_end..];
    }
    Ok(Duration::from_secs_f64(total))
}

/// What became of a hook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Succeeded,
    Failed(String),
    TimedOut,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        matches!(self, Outcome::Succeeded)
    }

    /// `Succeeded`, `Failed` or `TimedOut`.
    pub fn word(&self) -> &'static str {
        match self {
            Outcome::Succeeded => "Succeeded",
            Outcome::Failed(_) => "Failed",
            Outcome::TimedOut => "TimedOut",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn containers() -> Vec<String> {
        vec!["postgres".into(), "exporter".into()]
    }

    #[test]
    fn velero_annotations_with_defaults() {
        let a = ann(&[(
            "pre.hook.backup.velero.io/command",
            r#"["/bin/bash", "-c", "psql -c 'CHECKPOINT'"]"#,
        )]);
        let h = pod_hook(&a, &containers(), Phase::Pre).unwrap().unwrap();
        assert_eq!(h.command, ["/bin/bash", "-c", "psql -c 'CHECKPOINT'"]);
        assert_eq!(h.container, "postgres");
        assert_eq!(h.on_error, OnError::Fail);
        assert_eq!(h.timeout, Duration::from_secs(30));
        assert_eq!(pod_hook(&a, &containers(), Phase::Post).unwrap(), None);
    }

    #[test]
    fn every_field_and_the_post_twin() {
        let a = ann(&[
            (
                "post.hook.backup.velero.io/command",
                "/sbin/fsfreeze-unfreeze",
            ),
            ("post.hook.backup.velero.io/container", "exporter"),
            ("post.hook.backup.velero.io/on-error", "Continue"),
            ("post.hook.backup.velero.io/timeout", "1m30s"),
        ]);
        let h = pod_hook(&a, &containers(), Phase::Post).unwrap().unwrap();
        assert_eq!(h.command, ["/sbin/fsfreeze-unfreeze"]);
        assert_eq!(h.container, "exporter");
        assert_eq!(h.on_error, OnError::Continue);
        assert_eq!(h.timeout, Duration::from_secs(90));
    }

    #[test]
    fn invalid_annotations_say_what_is_wrong() {
        let cmd = ("pre.hook.backup.velero.io/command", r#"["sync""#);
        let e = pod_hook(&ann(&[cmd]), &containers(), Phase::Pre).unwrap_err();
        assert!(e.contains("JSON array"), "{e}");
        let ok = ("pre.hook.backup.velero.io/command", "sync");
        for (k, v, want) in [
            (
                "pre.hook.backup.velero.io/container",
                "nope",
                "no container",
            ),
            (
                "pre.hook.backup.velero.io/on-error",
                "Ignore",
                "neither Fail",
            ),
            (
                "pre.hook.backup.velero.io/timeout",
                "soon",
                "not a duration",
            ),
        ] {
            let e = pod_hook(&ann(&[ok, (k, v)]), &containers(), Phase::Pre).unwrap_err();
            assert!(e.contains(want) && e.contains(k), "{e}");
        }
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_go_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_go_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("10"), Ok(Duration::from_secs(10)));
        assert!(parse_go_duration("").is_err());
        assert!(parse_go_duration("5 minutes").is_err());
    }
}
