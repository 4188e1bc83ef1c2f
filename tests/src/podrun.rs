//! What both process kubelets do the same way (the real control plane's,
//! [`crate::kube::kubelet`], and the simulator's, `sim::kubelet`), as functions over
//! plain data: a container's environment from its spec and the Secrets and ConfigMaps
//! it names, the files of Secret and ConfigMap volumes, the downward API, the
//! termination message. Each kubelet fetches the objects its own way (the real API, the
//! fake store) and hands them in as [`Sources`].

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use k8s_openapi::api::core::v1::{ConfigMap, Container, KeyToPath, Pod, Secret};

/// The data of a Secret or ConfigMap, by key.
pub type Data = BTreeMap<String, Vec<u8>>;

/// Bytes of the termination message file that end up in the pod status (the kubelet's
/// limit).
pub const MAX_TERMINATION_MESSAGE: usize = 4096;

/// The kinds a container's env and volumes read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Secret,
    ConfigMap,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Secret => "Secret",
            Kind::ConfigMap => "ConfigMap",
        }
    }
}

/// What a kubelet found of the objects a container names: `None` for one that does
/// not exist.
pub type Sources = BTreeMap<(Kind, String), Option<Data>>;

/// A Secret's data.
pub fn secret_data(s: Secret) -> Data {
    s.data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect()
}

/// A ConfigMap's data and binary data.
pub fn config_map_data(c: ConfigMap) -> Data {
    let mut m: Data = c
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    m.extend(
        c.binary_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0)),
    );
    m
}

/// The Secrets and ConfigMaps a container's `envFrom` and `env` name.
pub fn env_sources(c: &Container) -> BTreeSet<(Kind, String)> {
    let mut out = BTreeSet::new();
    for from in c.env_from.iter().flatten() {
        if let Some(s) = &from.secret_ref {
            out.insert((Kind::Secret, s.name.clone()));
        } else if let Some(m) = &from.config_map_ref {
            out.insert((Kind::ConfigMap, m.name.clone()));
        }
    }
    for e in c.env.iter().flatten() {
        let Some(vf) = &e.value_from else { continue };
        if let Some(r) = &vf.secret_key_ref {
            out.insert((Kind::Secret, r.name.clone()));
        } else if let Some(r) = &vf.config_map_key_ref {
            out.insert((Kind::ConfigMap, r.name.clone()));
        }
    }
    out
}

/// The data of `kind`/`name` in `sources` (`Ok(None)`: optional and missing), with the
/// kubelet's error text otherwise.
pub fn lookup<'a>(
    sources: &'a Sources,
    kind: Kind,
    name: &str,
    optional: bool,
) -> Result<Option<&'a Data>, String> {
    match sources
        .get(&(kind, name.to_string()))
        .and_then(Option::as_ref)
    {
        Some(d) => Ok(Some(d)),
        None if optional => Ok(None),
        None => Err(format!(
            "{} \"{name}\" not found",
            kind.name().to_lowercase()
        )),
    }
}

/// One key of `kind`/`name` (`Ok(None)`: optional and missing).
fn key_of(
    sources: &Sources,
    ns: &str,
    kind: Kind,
    name: &str,
    key: &str,
    optional: bool,
) -> Result<Option<String>, String> {
    match lookup(sources, kind, name, optional)?.map(|d| d.get(key)) {
        Some(Some(v)) => Ok(Some(String::from_utf8_lossy(v).into_owned())),
        _ if optional => Ok(None),
        _ => Err(format!(
            "couldn't find key {key} in {} {ns}/{name}",
            kind.name()
        )),
    }
}

/// The container's environment, as the kubelet builds it (envFrom, then env, later
/// names replacing earlier ones). `literal` maps a literal value written in the pod
/// spec before `$(VAR)` expansion (the simulator maps its pod paths there); values from
/// Secrets, ConfigMaps and fields are data and pass unchanged.
pub fn container_env(
    pod: &Pod,
    c: &Container,
    sources: &Sources,
    literal: impl Fn(&str) -> String,
) -> Result<Vec<(String, String)>, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let mut env: Vec<(String, String)> = Vec::new();
    fn set(env: &mut Vec<(String, String)>, k: String, v: String) {
        env.retain(|(n, _)| *n != k);
        env.push((k, v));
    }
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (kind, name, optional) = match (&from.secret_ref, &from.config_map_ref) {
            (Some(s), _) => (Kind::Secret, &s.name, s.optional.unwrap_or(false)),
            (_, Some(c)) => (Kind::ConfigMap, &c.name, c.optional.unwrap_or(false)),
            _ => continue,
        };
        for (k, v) in lookup(sources, kind, name, optional)?.into_iter().flatten() {
            set(
                &mut env,
                format!("{prefix}{k}"),
                String::from_utf8_lossy(v).into_owned(),
            );
        }
    }
    for e in c.env.iter().flatten() {
        let value = if let Some(v) = &e.value {
            Some(expand(&literal(v), &env))
        } else if let Some(vf) = &e.value_from {
            if let Some(r) = &vf.secret_key_ref {
                let optional = r.optional.unwrap_or(false);
                key_of(sources, ns, Kind::Secret, &r.name, &r.key, optional)?
            } else if let Some(r) = &vf.config_map_key_ref {
                let optional = r.optional.unwrap_or(false);
                key_of(sources, ns, Kind::ConfigMap, &r.name, &r.key, optional)?
            } else if let Some(f) = &vf.field_ref {
                Some(field(pod, &f.field_path))
            } else {
                Some(String::new())
            }
        } else {
            Some(String::new())
        };
        if let Some(v) = value {
            set(&mut env, e.name.clone(), v);
        }
    }
    Ok(env)
}

/// A downward-API field of the pod (the pod's IPs are loopback: pods are processes).
pub fn field(pod: &Pod, path: &str) -> String {
    let m = &pod.metadata;
    let spec = pod.spec.as_ref();
    match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.hostIP" => "127.0.0.1".into(),
        p => {
            // metadata.labels['k'] / metadata.annotations['k']
            let (map, key) = p.split_once("['").unwrap_or((p, ""));
            let key = key.trim_end_matches("']");
            let values = match map {
                "metadata.labels" => m.labels.as_ref(),
                "metadata.annotations" => m.annotations.as_ref(),
                _ => None,
            };
            values.and_then(|v| v.get(key).cloned()).unwrap_or_default()
        }
    }
}

/// `$(VAR)` expansion as in container env, command and args (`$$` escapes).
pub fn expand(s: &str, vars: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(r) = rest.strip_prefix("$$") {
            out.push('$');
            rest = r;
            continue;
        }
        if rest.starts_with("$(")
            && let Some(end) = rest.find(')')
            && let Some((_, v)) = vars.iter().rev().find(|(k, _)| *k == rest[2..end])
        {
            out.push_str(v);
            rest = &rest[end + 1..];
            continue;
        }
        out.push('$');
        rest = &rest[1..];
    }
    out.push_str(rest);
    out
}

/// Writes `data` into `dir`: every key, or only `items` under their paths; an item's
/// mode, else `mode`.
pub fn write_files(
    dir: &Path,
    data: &Data,
    items: Option<&[KeyToPath]>,
    mode: Option<i32>,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let entries: Vec<(&str, &str, Option<i32>)> = match items {
        Some(items) => items
            .iter()
            .map(|i| (i.key.as_str(), i.path.as_str(), i.mode))
            .collect(),
        None => data
            .keys()
            .map(|k| (k.as_str(), k.as_str(), None))
            .collect(),
    };
    for (key, path, item_mode) in entries {
        let Some(content) = data.get(key) else {
            continue;
        };
        let file = dir.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&file, content)?;
        if let Some(m) = item_mode.or(mode) {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(m as u32))?;
        }
    }
    Ok(())
}

/// The termination message file, cut at the kubelet's limit.
pub fn termination_message(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_TERMINATION_MESSAGE)]).into_owned()
}

/// The end of a log as `FallbackToLogsOnError` takes it: the last 80 lines, at most
/// 2048 bytes.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let mut t = lines[lines.len().saturating_sub(80)..].join("\n");
    if t.len() > 2048 {
        let mut cut = t.len() - 2048;
        while !t.is_char_boundary(cut) {
            cut += 1;
        }
        t = t[cut..].to_string();
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u-1",
                         "labels": {"app": "db"}},
            "spec": {"nodeName": "node-a", "serviceAccountName": "sa",
                     "containers": [{"name": "c"}]},
        }))
        .unwrap()
    }

    fn container(v: serde_json::Value) -> Container {
        serde_json::from_value(v).unwrap()
    }

    /// An object's kind, name and data.
    type Entry<'a> = (Kind, &'a str, &'a [(&'a str, &'a str)]);

    fn sources(entries: &[Entry]) -> Sources {
        entries
            .iter()
            .map(|(k, n, d)| {
                (
                    (*k, n.to_string()),
                    Some(
                        d.iter()
                            .map(|(a, b)| (a.to_string(), b.as_bytes().to_vec()))
                            .collect(),
                    ),
                )
            })
            .collect()
    }

    #[test]
    fn env_from_then_env_later_names_win_and_literals_expand() {
        let c = container(json!({"name": "c",
            "envFrom": [{"configMapRef": {"name": "settings"}},
                        {"secretRef": {"name": "creds"}, "prefix": "S_"}],
            "env": [{"name": "A", "value": "over"},
                    {"name": "B", "value": "$(A)/x $$(A)"},
                    {"name": "K", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "k"}}},
                    {"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    {"name": "L", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}}]}));
        let found = sources(&[
            (Kind::ConfigMap, "settings", &[("A", "cm"), ("C", "/tmp/x")]),
            (Kind::Secret, "creds", &[("k", "secret")]),
        ]);
        assert_eq!(
            env_sources(&c),
            BTreeSet::from([
                (Kind::ConfigMap, "settings".to_string()),
                (Kind::Secret, "creds".to_string())
            ])
        );
        let env = container_env(&pod(), &c, &found, |v| v.replace("/x", "/mapped")).unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("A"), Some("over"));
        assert_eq!(get("B"), Some("over/mapped $(A)"));
        // Data from a ConfigMap is never mapped, whatever it looks like.
        assert_eq!(get("C"), Some("/tmp/x"));
        assert_eq!(get("S_k"), Some("secret"));
        assert_eq!(get("K"), Some("secret"));
        assert_eq!(get("N"), Some("ns"));
        assert_eq!(get("L"), Some("db"));
    }

    #[test]
    fn missing_objects_and_keys_fail_unless_optional() {
        let none = Sources::new();
        let c = container(json!({"name": "c", "envFrom": [{"secretRef": {"name": "gone"}}]}));
        assert_eq!(
            container_env(&pod(), &c, &none, str::to_string).unwrap_err(),
            "secret \"gone\" not found"
        );
        let c = container(json!({"name": "c",
            "envFrom": [{"secretRef": {"name": "gone", "optional": true}}],
            "env": [{"name": "K", "valueFrom": {"configMapKeyRef":
                        {"name": "cm", "key": "k", "optional": true}}}]}));
        assert_eq!(
            container_env(&pod(), &c, &none, str::to_string).unwrap(),
            vec![]
        );
        let found = sources(&[(Kind::ConfigMap, "cm", &[("other", "v")])]);
        let c = container(json!({"name": "c",
            "env": [{"name": "K", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}}]}));
        assert_eq!(
            container_env(&pod(), &c, &found, str::to_string).unwrap_err(),
            "couldn't find key k in ConfigMap ns/cm"
        );
    }

    #[test]
    fn volume_files_take_items_and_modes() {
        let dir = tempfile::tempdir().unwrap();
        let data: Data = [("a", "1"), ("b", "2")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect();
        write_files(&dir.path().join("all"), &data, None, Some(0o600)).unwrap();
        let items: Vec<KeyToPath> =
            serde_json::from_value(json!([{"key": "b", "path": "sub/bee", "mode": 0o400}]))
                .unwrap();
        write_files(&dir.path().join("some"), &data, Some(&items), Some(0o600)).unwrap();
        let mode = |p: &str| {
            std::fs::metadata(dir.path().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(std::fs::read(dir.path().join("all/a")).unwrap(), b"1");
        assert_eq!(mode("all/b"), 0o600);
        assert_eq!(
            std::fs::read(dir.path().join("some/sub/bee")).unwrap(),
            b"2"
        );
        assert_eq!(mode("some/sub/bee"), 0o400);
        assert!(!dir.path().join("some/a").exists());
    }

    #[test]
    fn the_log_fallback_is_the_last_80_lines_within_2048_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stderr");
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&log, &text).unwrap();
        let t = log_tail(&log);
        assert!(t.starts_with("line 20\n") && t.ends_with("line 99"), "{t}");
        std::fs::write(&log, "x".repeat(5000)).unwrap();
        assert_eq!(log_tail(&log).len(), 2048);
        std::fs::write(&log, "m".repeat(5000)).unwrap();
        assert_eq!(termination_message(&log).len(), MAX_TERMINATION_MESSAGE);
    }
}
