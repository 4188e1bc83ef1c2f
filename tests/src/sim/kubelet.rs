//! The simulated kubelet: starts scheduled pods. Containers whose image maps to a known
//! binary run as local processes (first container only; `restartPolicy` treated as
//! `Never`; `securityContext` not applied), with the environment the kubelet would give
//! them and container paths rewritten to the host directories that stand for volumes.
//! Other pods (apps) just become Running.
//!
//! The path mapping goes one way, from pod paths to host paths, and only over what the
//! pod spec itself writes: `command`, `args`, `workingDir`, literal `env` values (before
//! `$(VAR)` expansion) and the termination message path. Values the kubelet copies from
//! Secrets, ConfigMaps and the downward API are data and reach the process unchanged:
//! in the simulated world they hold host paths (a local repository under `/tmp`, say),
//! which must never be taken for a pod's `/tmp` or `/data`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::Inner;
use super::controllers::{matches_node_selector, s};
use crate::fakeapi::Gvr;
use crate::fakeapi::store::now_rfc3339;

/// Bytes of the termination message file that end up in the pod status.
const MAX_TERMINATION_MESSAGE: usize = 4096;

/// A running process of a pod.
pub(crate) struct Proc {
    ns: String,
    name: String,
    kill: Option<oneshot::Sender<()>>,
    done: Option<JoinHandle<()>>,
}

impl Proc {
    fn kill(&mut self) -> Option<JoinHandle<()>> {
        if let Some(k) = self.kill.take() {
            let _ = k.send(());
        }
        self.done.take()
    }
}

/// The kubelet's memory.
#[derive(Default)]
pub(crate) struct Kubelet {
    procs: HashMap<String, Proc>,
    started: HashSet<String>,
    logs: BTreeMap<(String, String), PathBuf>,
}

impl Kubelet {
    pub fn log_dir(&self, ns: &str, name: &str) -> Option<PathBuf> {
        self.logs.get(&(ns.to_string(), name.to_string())).cloned()
    }

    pub fn all_runs(&self) -> Vec<(String, String)> {
        self.logs.keys().cloned().collect()
    }

    pub fn kill_by_name(&mut self, ns: &str, name: &str) -> bool {
        match self
            .procs
            .values_mut()
            .find(|p| p.ns == ns && p.name == name)
        {
            Some(p) => {
                let had = p.kill.is_some();
                p.kill();
                had
            }
            None => false,
        }
    }

    /// Kills every process; the handles finish once they are reaped.
    pub fn kill_all(&mut self) -> Vec<JoinHandle<()>> {
        self.procs.values_mut().filter_map(Proc::kill).collect()
    }
}

/// One kubelet pass: kills processes of deleted pods, starts scheduled pods.
pub(crate) fn sync(inner: &Arc<Inner>, k: &mut Kubelet) {
    let pods = inner.store.list_json(&Gvr::core("pods"), None, None);
    let live: HashSet<&str> = pods
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| s(p, "/metadata/uid"))
        .collect();
    for (uid, p) in k.procs.iter_mut() {
        if !live.contains(uid.as_str()) {
            p.kill();
        }
    }
    k.started.retain(|u| live.contains(u.as_str()));
    for pod in &pods {
        if !pod["metadata"]["deletionTimestamp"].is_null()
            || s(pod, "/spec/nodeName").is_empty()
            || s(pod, "/status/phase") != "Pending"
            || k.started.contains(s(pod, "/metadata/uid"))
        {
            continue;
        }
        start_pod(inner, k, pod);
    }
}

/// Changes the status of pod `ns/name` if it is still the pod with `uid`.
fn set_status(inner: &Inner, ns: &str, name: &str, uid: &str, f: impl FnOnce(&mut Value)) {
    let _ = inner.store.modify_json(&Gvr::core("pods"), ns, name, |p| {
        if s(p, "/metadata/uid") == uid {
            if !p["status"].is_object() {
                p["status"] = json!({});
            }
            f(&mut p["status"]);
        }
    });
}

fn set_condition(status: &mut Value, type_: &str, value: &str, reason: &str, message: &str) {
    if !status["conditions"].is_array() {
        status["conditions"] = json!([]);
    }
    let conds = status["conditions"].as_array_mut().expect("array");
    let mut c = json!({"type": type_, "status": value});
    if !reason.is_empty() {
        c["reason"] = json!(reason);
    }
    if !message.is_empty() {
        c["message"] = json!(message);
    }
    match conds.iter_mut().find(|c| c["type"] == type_) {
        Some(existing) => {
            if existing["status"] != value
                || existing["reason"] != c["reason"]
                || existing["message"] != c["message"]
            {
                c["lastTransitionTime"] = json!(now_rfc3339());
                *existing = c;
            }
        }
        None => {
            c["lastTransitionTime"] = json!(now_rfc3339());
            conds.push(c);
        }
    }
}

/// Leaves the pod Pending with its first container waiting, as the kubelet reports it.
fn waiting(inner: &Inner, pod: &Value, reason: &str, message: &str) {
    let c = &pod["spec"]["containers"][0];
    let (ns, name, uid) = (
        s(pod, "/metadata/namespace"),
        s(pod, "/metadata/name"),
        s(pod, "/metadata/uid"),
    );
    set_status(inner, ns, name, uid, |st| {
        st["containerStatuses"] = json!([{
            "name": c["name"], "image": c["image"], "imageID": "", "ready": false,
            "started": false, "restartCount": 0,
            "state": {"waiting": {"reason": reason, "message": message}},
        }]);
    });
}

/// Looks up a Secret or ConfigMap key: `Ok(None)` when optional and missing.
fn lookup(
    inner: &Inner,
    ns: &str,
    kind: &str,
    name: &str,
    key: Option<&str>,
    optional: bool,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
    let data: Option<BTreeMap<String, Vec<u8>>> = if kind == "Secret" {
        inner.store.get::<Secret>(ns, name).map(|sec| {
            sec.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect()
        })
    } else {
        inner.store.get::<ConfigMap>(ns, name).map(|cm| {
            let mut m: BTreeMap<String, Vec<u8>> = cm
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            m.extend(
                cm.binary_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0)),
            );
            m
        })
    };
    let Some(data) = data else {
        return if optional {
            Ok(None)
        } else {
            Err(format!("{} \"{name}\" not found", kind.to_lowercase()))
        };
    };
    if let Some(key) = key
        && !data.contains_key(key)
    {
        return if optional {
            Ok(None)
        } else {
            Err(format!("couldn't find key {key} in {kind} {ns}/{name}"))
        };
    }
    Ok(Some(data))
}

/// `$(VAR)` expansion as in container env, command and args (`$$` escapes).
fn expand(s: &str, vars: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if rest.starts_with("$$") {
            out.push('$');
            rest = &rest[2..];
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

/// The container's environment, as the kubelet builds it (envFrom, then env). Literal
/// values are pod-spec text: their pod paths are mapped through `mounts` before `$(VAR)`
/// expansion; values from Secrets, ConfigMaps and fields are data, passed unchanged.
fn container_env(
    inner: &Inner,
    pod: &Value,
    c: &Value,
    mounts: &[(String, PathBuf)],
) -> Result<Vec<(String, String)>, String> {
    let ns = s(pod, "/metadata/namespace");
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        env.retain(|(n, _)| *n != k);
        env.push((k, v));
    };
    for from in c["envFrom"].as_array().into_iter().flatten() {
        let prefix = from["prefix"].as_str().unwrap_or("");
        let (kind, r) = if from["secretRef"].is_object() {
            ("Secret", &from["secretRef"])
        } else {
            ("ConfigMap", &from["configMapRef"])
        };
        let optional = r["optional"].as_bool().unwrap_or(false);
        if let Some(data) = lookup(inner, ns, kind, s(r, "/name"), None, optional)? {
            for (k, v) in data {
                set(
                    &mut env,
                    format!("{prefix}{k}"),
                    String::from_utf8_lossy(&v).into_owned(),
                );
            }
        }
    }
    for e in c["env"].as_array().into_iter().flatten() {
        let name = s(e, "/name").to_string();
        let vf = &e["valueFrom"];
        let value = if let Some(v) = e["value"].as_str() {
            Some(expand(&rewrite(v, mounts), &env))
        } else if vf.is_object() {
            let (kind, r) = if vf["secretKeyRef"].is_object() {
                ("Secret", &vf["secretKeyRef"])
            } else if vf["configMapKeyRef"].is_object() {
                ("ConfigMap", &vf["configMapKeyRef"])
            } else {
                ("", &Value::Null)
            };
            if !kind.is_empty() {
                let key = s(r, "/key");
                let optional = r["optional"].as_bool().unwrap_or(false);
                lookup(inner, ns, kind, s(r, "/name"), Some(key), optional)?
                    .and_then(|d| d.get(key).cloned())
                    .map(|v| String::from_utf8_lossy(&v).into_owned())
            } else if let Some(path) = vf["fieldRef"]["fieldPath"].as_str() {
                Some(match path {
                    "metadata.name" => s(pod, "/metadata/name").to_string(),
                    "metadata.namespace" => ns.to_string(),
                    "metadata.uid" => s(pod, "/metadata/uid").to_string(),
                    "spec.nodeName" => s(pod, "/spec/nodeName").to_string(),
                    "spec.serviceAccountName" => s(pod, "/spec/serviceAccountName").to_string(),
                    "status.podIP" | "status.hostIP" => "127.0.0.1".to_string(),
                    p => {
                        // metadata.labels['k'] / metadata.annotations['k']
                        let (field, key) = p.split_once("['").unwrap_or((p, ""));
                        let key = key.trim_end_matches("']");
                        let field = field.trim_start_matches("metadata.");
                        pod["metadata"][field][key]
                            .as_str()
                            .unwrap_or("")
                            .to_string()
                    }
                })
            } else {
                Some(String::new())
            }
        } else {
            Some(String::new())
        };
        if let Some(v) = value {
            set(&mut env, name, v);
        }
    }
    Ok(env)
}

/// Replaces container paths (`/data`, `/data/x`) with host paths wherever they
/// appear as a path: at the start of the string or after a non-path character, and
/// followed by the end, `/` or a non-path character. Longest mount wins. Only for
/// pod-spec text, before `$(VAR)` expansion (a path right after `$(VAR)` continues the
/// variable's value and is left alone).
pub(crate) fn rewrite(text: &str, mounts: &[(String, PathBuf)]) -> String {
    let path_char = |c: char| c.is_ascii_alphanumeric() || "_.-/~$".contains(c);
    // `)` before a path: the end of a `$(VAR)` whose value the path continues.
    let continues = |c: char| path_char(c) || c == ')';
    let mut sorted: Vec<&(String, PathBuf)> =
        mounts.iter().filter(|(m, _)| !m.is_empty()).collect();
    sorted.sort_by_key(|(m, _)| std::cmp::Reverse(m.len()));
    let mut out = String::new();
    let mut i = 0;
    let bytes = text.as_bytes();
    'outer: while i < text.len() {
        let before_ok = i == 0 || !text[..i].chars().next_back().is_some_and(continues);
        if before_ok && bytes[i] == b'/' {
            for (m, host) in &sorted {
                if text[i..].starts_with(m.as_str()) {
                    let after = text[i + m.len()..].chars().next();
                    if after.is_none_or(|c| c == '/' || !path_char(c)) {
                        out.push_str(&host.to_string_lossy());
                        i += m.len();
                        continue 'outer;
                    }
                }
            }
        }
        let c = text[i..].chars().next().expect("char");
        out.push(c);
        i += c.len_utf8();
    }
    out
}

fn write_files(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<Value>>,
    mode: Option<u32>,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let entries: Vec<(String, String, Option<u32>)> = match items {
        Some(items) => items
            .iter()
            .map(|i| {
                (
                    s(i, "/key").to_string(),
                    s(i, "/path").to_string(),
                    i["mode"].as_u64().map(|m| m as u32),
                )
            })
            .collect(),
        None => data.keys().map(|k| (k.clone(), k.clone(), None)).collect(),
    };
    for (key, path, item_mode) in entries {
        let Some(content) = data.get(&key) else {
            continue;
        };
        let file = dir.join(&path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&file, content)?;
        if let Some(m) = item_mode.or(mode) {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(m))?;
        }
    }
    Ok(())
}

fn node_labels(inner: &Inner, node: &str) -> BTreeMap<String, String> {
    inner
        .store
        .get_json(&Gvr::core("nodes"), "", node)
        .and_then(|n| serde_json::from_value(n["metadata"]["labels"].clone()).ok())
        .unwrap_or_default()
}

/// Host directories of the pod's volumes, or why the pod cannot start yet
/// (reason, message); `Ok(None)` entries are for volumes materialised at start.
fn volume_dirs(
    inner: &Inner,
    pod: &Value,
    pod_dir: &Path,
) -> Result<HashMap<String, PathBuf>, (String, String)> {
    let ns = s(pod, "/metadata/namespace");
    let node = s(pod, "/spec/nodeName");
    let mut dirs = HashMap::new();
    for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        let vname = s(v, "/name").to_string();
        let dir = if v["persistentVolumeClaim"].is_object() {
            let claim = s(v, "/persistentVolumeClaim/claimName");
            let pending = || {
                (
                    "ContainerCreating".to_string(),
                    format!("waiting for persistentvolumeclaim \"{claim}\" to be bound"),
                )
            };
            let pvc = inner
                .store
                .get_json(&Gvr::core("persistentvolumeclaims"), ns, claim)
                .ok_or_else(pending)?;
            let pv_name = s(&pvc, "/spec/volumeName");
            if pv_name.is_empty() || s(&pvc, "/status/phase") != "Bound" {
                return Err(pending());
            }
            let pv = inner
                .store
                .get_json(&Gvr::core("persistentvolumes"), "", pv_name)
                .ok_or_else(pending)?;
            let affinity = &pv["spec"]["nodeAffinity"]["required"];
            if affinity.is_object()
                && !matches_node_selector(affinity, node, &node_labels(inner, node))
            {
                return Err((
                    "VolumeNodeAffinityConflict".into(),
                    format!("volume \"{vname}\" (PV {pv_name}) is not available on node {node}"),
                ));
            }
            PathBuf::from(s(&pv, "/spec/hostPath/path"))
        } else if v["hostPath"].is_object() {
            PathBuf::from(s(v, "/hostPath/path"))
        } else {
            pod_dir.join("volumes").join(&vname)
        };
        dirs.insert(vname, dir);
    }
    Ok(dirs)
}

/// Writes Secret/ConfigMap volumes and creates emptyDirs.
fn materialise(inner: &Inner, pod: &Value, dirs: &HashMap<String, PathBuf>) -> Result<(), String> {
    let ns = s(pod, "/metadata/namespace");
    for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        let dir = &dirs[s(v, "/name")];
        let (kind, src, name_field) = if v["secret"].is_object() {
            ("Secret", &v["secret"], "/secretName")
        } else if v["configMap"].is_object() {
            ("ConfigMap", &v["configMap"], "/name")
        } else {
            if !v["persistentVolumeClaim"].is_object() && !v["hostPath"].is_object() {
                std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
            }
            continue;
        };
        let optional = src["optional"].as_bool().unwrap_or(false);
        let data = lookup(inner, ns, kind, s(src, name_field), None, optional)
            .map_err(|e| {
                format!(
                    "MountVolume.SetUp failed for volume \"{}\" : {e}",
                    s(v, "/name")
                )
            })?
            .unwrap_or_default();
        let mode = src["defaultMode"].as_u64().map(|m| m as u32);
        write_files(dir, &data, src["items"].as_array(), mode).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn start_pod(inner: &Arc<Inner>, k: &mut Kubelet, pod: &Value) {
    let (ns, name, uid) = (
        s(pod, "/metadata/namespace"),
        s(pod, "/metadata/name"),
        s(pod, "/metadata/uid"),
    );
    let pod_dir = inner
        .root
        .join("pods")
        .join(format!("{ns}_{name}_{}", &uid[..8.min(uid.len())]));
    let dirs = match volume_dirs(inner, pod, &pod_dir) {
        Ok(d) => d,
        Err((reason, message)) => {
            if reason == "VolumeNodeAffinityConflict" {
                set_status(inner, ns, name, uid, |st| {
                    set_condition(st, "PodScheduled", "False", &reason, &message)
                });
            }
            waiting(
                inner,
                pod,
                if reason == "VolumeNodeAffinityConflict" {
                    "ContainerCreating"
                } else {
                    &reason
                },
                &message,
            );
            return;
        }
    };
    let c = &pod["spec"]["containers"][0];
    let binary = inner
        .options
        .binaries
        .get(super::image_key(s(c, "/image")))
        .cloned();
    let now = now_rfc3339();
    let Some(binary) = binary else {
        // An app pod: nothing to run, it just runs.
        k.started.insert(uid.to_string());
        let statuses: Vec<Value> = pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| json!({"name": c["name"], "image": c["image"], "imageID": "", "ready": true, "started": true,
                            "restartCount": 0, "state": {"running": {"startedAt": now}}}))
            .collect();
        set_status(inner, ns, name, uid, |st| running(st, statuses, &now));
        return;
    };
    if let Err(message) = materialise(inner, pod, &dirs) {
        return waiting(inner, pod, "ContainerCreating", &message);
    }
    if std::fs::create_dir_all(pod_dir.join("home")).is_err() {
        return waiting(
            inner,
            pod,
            "ContainerCreating",
            "cannot create the pod directory",
        );
    }
    // Container paths → host paths: volume mounts and the termination message file.
    let term_path = c["terminationMessagePath"]
        .as_str()
        .unwrap_or("/dev/termination-log");
    let term_file = pod_dir.join("termination-log");
    let _ = std::fs::write(&term_file, b"");
    let mut mounts: Vec<(String, PathBuf)> = vec![(term_path.to_string(), term_file.clone())];
    for m in c["volumeMounts"].as_array().into_iter().flatten() {
        let Some(base) = dirs.get(s(m, "/name")) else {
            continue;
        };
        let sub = s(m, "/subPath");
        let host = if sub.is_empty() {
            base.clone()
        } else {
            base.join(sub)
        };
        if !sub.is_empty() {
            let _ = std::fs::create_dir_all(&host);
        }
        mounts.push((s(m, "/mountPath").trim_end_matches('/').to_string(), host));
    }
    let env = match container_env(inner, pod, c, &mounts) {
        Ok(e) => e,
        Err(message) => return waiting(inner, pod, "CreateContainerConfigError", &message),
    };
    // Pod-spec text: its paths mapped first, then `$(VAR)` expanded with values that
    // are final (never mapped again).
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|x| expand(&rewrite(x.as_str().unwrap_or(""), &mounts), &env))
            .collect()
    };
    // command[0] stands for the image's entrypoint, which is the mapped binary.
    let mut args: Vec<String> = strings(&c["command"]).into_iter().skip(1).collect();
    args.extend(strings(&c["args"]));
    let workdir = match c["workingDir"].as_str() {
        Some(w) if !w.is_empty() => PathBuf::from(rewrite(w, &mounts)),
        _ => pod_dir.clone(),
    };
    let open = |f: &str| std::fs::File::create(pod_dir.join(f));
    let (Ok(stdout), Ok(stderr)) = (open("stdout"), open("stderr")) else {
        return waiting(inner, pod, "ContainerCreating", "cannot create log files");
    };
    let mut cmd = tokio::process::Command::new(&binary);
    cmd.args(&args)
        .current_dir(&workdir)
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(true);
    for key in ["PATH", "RUST_LOG", "RUST_BACKTRACE"] {
        if let Ok(v) = std::env::var(key) {
            cmd.env(key, v);
        }
    }
    let sa = match s(pod, "/spec/serviceAccountName") {
        "" => "default",
        sa => sa,
    };
    cmd.env("HOME", pod_dir.join("home"))
        .env("HOSTNAME", name)
        .env(
            "KUBECONFIG",
            inner.kubeconfig_for(&format!("system:serviceaccount:{ns}:{sa}")),
        );
    cmd.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    k.started.insert(uid.to_string());
    k.logs
        .insert((ns.to_string(), name.to_string()), pod_dir.clone());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let message = format!("failed to start {}: {e}", binary.display());
            set_status(inner, ns, name, uid, |st| {
                st["phase"] = json!("Failed");
                st["containerStatuses"] = json!([{"name": c["name"], "image": c["image"], "ready": false, "restartCount": 0,
                    "state": {"terminated": {"exitCode": 128, "reason": "StartError", "message": message}}}]);
            });
            return;
        }
    };
    let statuses = vec![
        json!({"name": c["name"], "image": c["image"], "imageID": "", "ready": true, "started": true,
        "restartCount": 0, "containerID": format!("sim://{}", child.id().unwrap_or(0)),
        "state": {"running": {"startedAt": now}}}),
    ];
    set_status(inner, ns, name, uid, |st| running(st, statuses, &now));

    let (kill_tx, kill_rx) = oneshot::channel::<()>();
    let task_inner = inner.clone();
    let (tns, tname, tuid) = (ns.to_string(), name.to_string(), uid.to_string());
    let policy = s(c, "/terminationMessagePolicy").to_string();
    let done = tokio::spawn(async move {
        let status = tokio::select! {
            s = child.wait() => s,
            _ = kill_rx => {
                let _ = child.start_kill();
                child.wait().await
            }
        };
        let code = match &status {
            Ok(st) => st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(9)),
            Err(_) => 137,
        };
        let mut message = read_capped(&term_file);
        if message.is_empty() && code != 0 && policy == "FallbackToLogsOnError" {
            message = tail(&pod_dir.join("stderr"));
        }
        let finished = now_rfc3339();
        set_status(&task_inner, &tns, &tname, &tuid, |st| {
            st["phase"] = json!(if code == 0 { "Succeeded" } else { "Failed" });
            if let Some(cs) = st["containerStatuses"].get_mut(0) {
                let started = cs["state"]["running"]["startedAt"].clone();
                cs["ready"] = json!(false);
                cs["started"] = json!(false);
                cs["state"] = json!({"terminated": {
                    "exitCode": code,
                    "reason": if code == 0 { "Completed" } else { "Error" },
                    "message": message,
                    "startedAt": started,
                    "finishedAt": finished,
                    "containerID": cs["containerID"],
                }});
            }
            set_condition(st, "Ready", "False", "PodCompleted", "");
            set_condition(st, "ContainersReady", "False", "PodCompleted", "");
        });
        task_inner
            .kubelet
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .procs
            .remove(&tuid);
    });
    k.procs.insert(
        uid.to_string(),
        Proc {
            ns: ns.to_string(),
            name: name.to_string(),
            kill: Some(kill_tx),
            done: Some(done),
        },
    );
}

fn running(st: &mut Value, statuses: Vec<Value>, now: &str) {
    st["phase"] = json!("Running");
    st["startTime"] = json!(now);
    st["hostIP"] = json!("127.0.0.1");
    st["podIP"] = json!("127.0.0.1");
    st["containerStatuses"] = json!(statuses);
    set_condition(st, "PodScheduled", "True", "", "");
    set_condition(st, "Initialized", "True", "", "");
    set_condition(st, "ContainersReady", "True", "", "");
    set_condition(st, "Ready", "True", "", "");
}

fn read_capped(path: &Path) -> String {
    let mut data = std::fs::read(path).unwrap_or_default();
    data.truncate(MAX_TERMINATION_MESSAGE);
    String::from_utf8_lossy(&data).into_owned()
}

/// The end of a log: the last 80 lines, at most 2048 bytes (the kubelet's fallback).
fn tail(path: &Path) -> String {
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

    #[test]
    fn rewrites_paths() {
        let m = vec![
            ("/data".to_string(), PathBuf::from("/h/vol")),
            ("/data/sub".to_string(), PathBuf::from("/h/other")),
            ("/dev/termination-log".to_string(), PathBuf::from("/h/term")),
        ];
        assert_eq!(rewrite("/data", &m), "/h/vol");
        assert_eq!(rewrite("/data/x", &m), "/h/vol/x");
        assert_eq!(rewrite("/data/sub/y", &m), "/h/other/y");
        assert_eq!(
            rewrite("ls /data > /data/out; echo x > /dev/termination-log", &m),
            "ls /h/vol > /h/vol/out; echo x > /h/term"
        );
        assert_eq!(rewrite("--path=/data", &m), "--path=/h/vol");
        assert_eq!(rewrite("/database /x/data", &m), "/database /x/data");
        assert_eq!(rewrite("'/data'", &m), "'/h/vol'");
        // A path after `$(VAR)` belongs to the variable's value.
        assert_eq!(rewrite("$(HOME)/data", &m), "$(HOME)/data");
        assert_eq!(rewrite("(cd /data)", &m), "(cd /h/vol)");
        // A mount at `/` maps nothing (and never loops).
        let root = vec![(String::new(), PathBuf::from("/h/root"))];
        assert_eq!(rewrite("/data", &root), "/data");
    }

    #[test]
    fn expands_vars() {
        let v = vec![("A".to_string(), "1".to_string())];
        assert_eq!(expand("x$(A)y$(B)$$(A)$", &v), "x1y$(B)$(A)$");
    }
}
