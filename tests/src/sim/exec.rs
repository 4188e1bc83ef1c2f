//! The simulator's side of `pods/exec` (hooks): the command runs as a local process,
//! with the container's volume mounts rewritten to the host directories that stand for
//! them (as the kubelet does for the containers it runs), in a pod that must be Running
//! and have that container. A client that leaves (timeout) kills the process. Every
//! exec is appended to `<root>/exec.log` (JSON lines), which [`records`] reads back.
//!
//! Not simulated: the container's image (the host's programs run), its user and
//! environment (only `PATH`), stdin and TTYs.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Inner;
use super::controllers::s;
use super::kubelet::rewrite;
use crate::fakeapi::Gvr;
use crate::fakeapi::exec::{ExecHandler, ExecOutput, ExecRequest};

/// One line of the exec log: the start (`exit` None, `finished` None) or the end of an
/// exec.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ExecRecord {
    /// `start` or `end`.
    pub event: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
    /// The command as requested (container paths).
    pub command: Vec<String>,
    /// RFC 3339 time of the event.
    pub time: String,
    /// Exit code (`end` only; None when the exec could not run).
    pub exit: Option<i32>,
}

/// The exec log of a simulated cluster (`Cluster::root`).
pub fn records(root: &Path) -> Vec<ExecRecord> {
    std::fs::read_to_string(root.join("exec.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn log(root: &Path, r: &ExecRecord) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join("exec.log"))
    {
        let _ = writeln!(f, "{}", serde_json::to_string(r).unwrap_or_default());
    }
}

/// The handler to register with the fake API.
pub(crate) fn handler(inner: Arc<Inner>) -> ExecHandler {
    Arc::new(move |req| {
        let inner = inner.clone();
        Box::pin(async move { run(&inner, req).await })
    })
}

fn fail(message: String) -> ExecOutput {
    ExecOutput {
        stdout: Vec::new(),
        stderr: Vec::new(),
        exit: Err(message),
    }
}

/// Host directories of a container's volume mounts (PVCs only; others are skipped).
fn mounts(inner: &Inner, pod: &Value, container: &Value) -> Vec<(String, PathBuf)> {
    let ns = s(pod, "/metadata/namespace");
    let mut out = Vec::new();
    for m in container["volumeMounts"].as_array().into_iter().flatten() {
        let Some(vol) = pod["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| s(v, "/name") == s(m, "/name"))
        else {
            continue;
        };
        let claim = s(vol, "/persistentVolumeClaim/claimName");
        if claim.is_empty() {
            continue;
        }
        let Some(pv_dir) = inner
            .store
            .get_json(&Gvr::core("persistentvolumeclaims"), ns, claim)
            .and_then(|pvc| {
                inner.store.get_json(
                    &Gvr::core("persistentvolumes"),
                    "",
                    s(&pvc, "/spec/volumeName"),
                )
            })
            .map(|pv| PathBuf::from(s(&pv, "/spec/hostPath/path")))
        else {
            continue;
        };
        let sub = s(m, "/subPath");
        let host = if sub.is_empty() {
            pv_dir
        } else {
            pv_dir.join(sub)
        };
        out.push((s(m, "/mountPath").trim_end_matches('/').to_string(), host));
    }
    out
}

async fn run(inner: &Inner, req: ExecRequest) -> ExecOutput {
    let Some(pod) = inner
        .store
        .get_json(&Gvr::core("pods"), &req.namespace, &req.pod)
    else {
        return fail(format!("pods \"{}\" not found", req.pod));
    };
    if s(&pod, "/status/phase") != "Running" {
        return fail(format!(
            "unable to upgrade connection: container not found (pod {} is not running)",
            req.pod
        ));
    }
    let containers: Vec<&Value> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let container = if req.container.is_empty() {
        containers.first().copied()
    } else {
        containers
            .iter()
            .copied()
            .find(|c| s(c, "/name") == req.container)
    };
    let Some(container) = container else {
        return fail(format!(
            "container {} is not valid for pod {}",
            req.container, req.pod
        ));
    };
    if req.command.is_empty() {
        return fail("you must specify at least one command for the container".into());
    }
    let mounts = mounts(inner, &pod, container);
    let args: Vec<String> = req.command.iter().map(|a| rewrite(a, &mounts)).collect();
    let mut record = ExecRecord {
        event: "start".into(),
        namespace: req.namespace.clone(),
        pod: req.pod.clone(),
        container: s(container, "/name").to_string(),
        command: req.command.clone(),
        time: jiff::Timestamp::now().to_string(),
        exit: None,
    };
    log(&inner.root, &record);
    let mut cmd = tokio::process::Command::new(&args[0]);
    cmd.args(&args[1..])
        .env_clear()
        .current_dir(&inner.root)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Ok(p) = std::env::var("PATH") {
        cmd.env("PATH", p);
    }
    let out = cmd.output().await;
    record.event = "end".into();
    record.time = jiff::Timestamp::now().to_string();
    let result = match out {
        Ok(o) => {
            record.exit = Some(o.status.code().unwrap_or(137));
            ExecOutput {
                stdout: o.stdout,
                stderr: o.stderr,
                exit: Ok(o.status.code().unwrap_or(137)),
            }
        }
        Err(e) => fail(format!(
            "OCI runtime exec failed: exec: \"{}\": {e}",
            req.command[0]
        )),
    };
    log(&inner.root, &record);
    result
}
