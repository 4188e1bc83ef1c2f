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
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Volume};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::Inner;
use super::controllers::{matches_node_selector, s};
use crate::fakeapi::Gvr;
use crate::fakeapi::store::now_rfc3339;
use crate::podrun::{self, Data, Kind, Sources, expand, write_files};

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

/// A Secret's or ConfigMap's data in the store, `None` when there is none.
fn fetch(inner: &Inner, ns: &str, kind: Kind, name: &str) -> Option<Data> {
    match kind {
        Kind::Secret => inner.store.get::<Secret>(ns, name).map(podrun::secret_data),
        Kind::ConfigMap => inner
            .store
            .get::<ConfigMap>(ns, name)
            .map(podrun::config_map_data),
    }
}

/// The container's environment, as the kubelet builds it (`podrun::container_env`).
/// Literal values are pod-spec text: their pod paths are mapped through `mounts`
/// before `$(VAR)` expansion; values from Secrets, ConfigMaps and fields are data,
/// passed unchanged.
fn container_env(
    inner: &Inner,
    pod: &Value,
    c: &Value,
    mounts: &[(String, PathBuf)],
) -> Result<Vec<(String, String)>, String> {
    let ns = s(pod, "/metadata/namespace");
    let typed_pod: Pod = serde_json::from_value(pod.clone()).map_err(|e| e.to_string())?;
    let c: Container = serde_json::from_value(c.clone()).map_err(|e| e.to_string())?;
    let sources: Sources = podrun::env_sources(&c)
        .into_iter()
        .map(|(kind, name)| {
            let data = fetch(inner, ns, kind, &name);
            ((kind, name), data)
        })
        .collect();
    podrun::container_env(&typed_pod, &c, &sources, |v| rewrite(v, mounts))
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
        let v: Volume = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
        let dir = &dirs[&v.name];
        let (kind, name, optional, items, mode) = if let Some(sec) = &v.secret {
            let name = sec.secret_name.clone().unwrap_or_default();
            (
                Kind::Secret,
                name,
                sec.optional,
                &sec.items,
                sec.default_mode,
            )
        } else if let Some(cm) = &v.config_map {
            (
                Kind::ConfigMap,
                cm.name.clone(),
                cm.optional,
                &cm.items,
                cm.default_mode,
            )
        } else {
            if v.persistent_volume_claim.is_none() && v.host_path.is_none() {
                std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
            }
            continue;
        };
        let mut sources = Sources::new();
        sources.insert((kind, name.clone()), fetch(inner, ns, kind, &name));
        let data = podrun::lookup(&sources, kind, &name, optional.unwrap_or(false))
            .map_err(|e| format!("MountVolume.SetUp failed for volume \"{}\" : {e}", v.name))?
            .cloned()
            .unwrap_or_default();
        write_files(dir, &data, items.as_deref(), mode).map_err(|e| e.to_string())?;
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
        let mut message = podrun::termination_message(&term_file);
        if message.is_empty() && code != 0 && policy == "FallbackToLogsOnError" {
            message = podrun::log_tail(&pod_dir.join("stderr"));
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
