//! A process kubelet against the real API server: it registers Nodes (labels, taints,
//! capacity, the Ready condition) and renews their Leases, and runs the pods the real
//! scheduler bound to its nodes as local processes of the workspace's binaries (image
//! → binary by the `images` of `kustomize/app/kustomization.yaml`). Pods of other
//! images (apps) become Running without a process.
//!
//! Paths: a pod sees its own filesystem. Each pod has a root directory on the host;
//! every mount path `P` of a container is `<root>/P` (a symlink to the volume's host
//! directory, or the termination message file), and every value of the container's
//! `env`, `command` and `args` that is an absolute path (alone or after `--flag=`) is
//! read as a pod path and becomes `<root>/<path>`. A pod spec holds only pod paths (the
//! programs tell their children where their data is through env), so no host path can
//! be mistaken for a pod path, whatever directory the checkout or the test runs in.
//!
//! What it does: env and envFrom (Secret, ConfigMap, fieldRef), Secret, ConfigMap,
//! emptyDir, PVC (the PV's `local`/`hostPath` path) and projected volumes (the
//! ServiceAccount token by the TokenRequest API, the root CA, the namespace) written
//! into the pod's root; a pod that mounts the token gets a `KUBECONFIG` with it and
//! `KUBERNETES_SERVICE_HOST/PORT` of the loopback API server (no kube-proxy); exit
//! codes and termination messages (`FallbackToLogsOnError` too) go into
//! `pods/status`; a pod that is deleted has its process killed, then its object
//! removed. Not done: first container only, `restartPolicy` is `Never`, no
//! `securityContext`, resource limits or read-only mounts, no exec or logs API (a
//! test reads [`Kubelet::log`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::kube::Client;
use ::kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use ::kube::runtime::{WatchStreamExt, watcher};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    ConfigMap, Node, PersistentVolume, PersistentVolumeClaim, Pod, Secret,
};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::ControlPlane;
use crate::podrun::{self, Data, Kind, Sources, expand, write_files};

/// How often a node's Lease and Ready condition are renewed (the kubelet's default).
const HEARTBEAT: Duration = Duration::from_secs(10);
/// How long a pod that cannot start yet (a missing Secret, an unbound PVC) waits
/// before the kubelet tries again.
const RETRY: Duration = Duration::from_secs(2);
/// Where a pod's ServiceAccount token is mounted.
pub const TOKEN_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// A node the kubelet registers.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Taints (`{"key", "value", "effect"}`).
    pub taints: Vec<Value>,
}

impl NodeSpec {
    pub fn new(name: &str) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            labels: BTreeMap::new(),
            taints: Vec::new(),
        }
    }
}

/// The image repository → binary map of the shipped kustomization: the last path
/// segment of each `images[].name` is the name of a workspace binary.
pub fn shipped_images() -> BTreeMap<String, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kustomize/app/kustomization.yaml");
    let k: Value = serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap())
        .expect("kustomization.yaml");
    k["images"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["name"].as_str())
        .map(|name| {
            let bin = name.rsplit('/').next().unwrap_or(name).to_string();
            (name.to_string(), bin)
        })
        .collect()
}

/// The repository of an image reference (`repo[:tag][@digest]`).
pub fn image_repository(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    // A ':' after the last '/' starts the tag (a registry port comes before it).
    match no_digest.rfind(':') {
        Some(i) if !no_digest[i..].contains('/') => &no_digest[..i],
        _ => no_digest,
    }
}

/// A pod's view of one path: `root` + the pod path.
pub fn in_root(root: &Path, pod_path: &str) -> PathBuf {
    root.join(pod_path.trim_start_matches('/'))
}

/// A value of a container's env, command or args with its pod paths mapped into the
/// pod's root: an absolute path, or the value after `--flag=` when that is one.
pub fn map_value(value: &str, root: &Path) -> String {
    if value.starts_with('/') {
        return in_root(root, value).display().to_string();
    }
    if value.starts_with('-')
        && let Some((flag, v)) = value.split_once('=')
        && v.starts_with('/')
    {
        return format!("{flag}={}", in_root(root, v).display());
    }
    value.to_string()
}

/// The running process of a pod: dropping `kill` (or sending on it) ends it.
struct Proc {
    kill: Option<oneshot::Sender<()>>,
}

struct Shared {
    cp: &'static ControlPlane,
    /// Image repository → binary path.
    binaries: BTreeMap<String, PathBuf>,
    root: PathBuf,
    /// Pod uid → its process (or the task starting it); kept once the process ended.
    procs: Mutex<HashMap<String, Proc>>,
    /// (namespace, pod) → the pod's directory, of every pod started.
    runs: Mutex<BTreeMap<(String, String), PathBuf>>,
}

/// The kubelet of one or more nodes, on a runtime of its own (it outlives each test's
/// runtime).
pub struct Kubelet {
    shared: Arc<Shared>,
    _rt: tokio::runtime::Runtime,
}

impl Kubelet {
    /// Registers `nodes` and serves them; `binaries` maps image repositories to the
    /// binaries their containers run.
    pub fn start(
        cp: &'static ControlPlane,
        nodes: Vec<NodeSpec>,
        binaries: BTreeMap<String, PathBuf>,
    ) -> Kubelet {
        let root = cp.dir.join("kubelet");
        std::fs::create_dir_all(&root).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("kubelet")
            .build()
            .unwrap();
        let shared = Arc::new(Shared {
            cp,
            binaries,
            root,
            procs: Mutex::new(HashMap::new()),
            runs: Mutex::new(BTreeMap::new()),
        });
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let count = nodes.len();
        for node in nodes {
            let (shared, ready) = (shared.clone(), ready_tx.clone());
            rt.spawn(async move {
                let client = cp.client().await;
                register(&client, &node).await;
                let _ = ready.send(());
                tokio::spawn(heartbeat(client.clone(), node.name.clone()));
                serve(shared, client, node.name).await;
            });
        }
        drop(ready_tx);
        // Every node is registered before the first pod is created (a task that
        // panicked drops its sender: recv fails instead of waiting).
        for _ in 0..count {
            if ready_rx.recv().is_err() {
                break;
            }
        }
        Kubelet { shared, _rt: rt }
    }

    /// The directory of pod `ns/name` (its `stdout`, `stderr`, `termination-log` and
    /// `root/`), if the kubelet started it.
    pub fn pod_dir(&self, ns: &str, name: &str) -> Option<PathBuf> {
        self.shared
            .runs
            .lock()
            .unwrap()
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
    }

    /// stdout and stderr of pod `ns/name` (empty if it never ran).
    pub fn log(&self, ns: &str, name: &str) -> String {
        self.pod_dir(ns, name)
            .map(|d| {
                format!(
                    "{}{}",
                    std::fs::read_to_string(d.join("stdout")).unwrap_or_default(),
                    std::fs::read_to_string(d.join("stderr")).unwrap_or_default()
                )
            })
            .unwrap_or_default()
    }

    /// Every pod the kubelet started: (namespace, name).
    pub fn runs(&self) -> Vec<(String, String)> {
        self.shared.runs.lock().unwrap().keys().cloned().collect()
    }
}

async fn register(client: &Client, node: &NodeSpec) {
    let mut labels = node.labels.clone();
    labels.insert("kubernetes.io/hostname".into(), node.name.clone());
    labels.insert("kubernetes.io/os".into(), "linux".into());
    labels.insert("kubernetes.io/arch".into(), "amd64".into());
    let resources =
        json!({"cpu": "8", "memory": "16Gi", "pods": "110", "ephemeral-storage": "100Gi"});
    let obj: Node = serde_json::from_value(json!({
        "metadata": {"name": node.name, "labels": labels},
        "spec": {"taints": node.taints},
        "status": {
            "capacity": resources, "allocatable": resources,
            "conditions": [ready_condition()],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                          {"type": "Hostname", "address": node.name}],
            "nodeInfo": {"kubeletVersion": "v1.36.3", "operatingSystem": "linux",
                         "architecture": "amd64", "containerRuntimeVersion": "process://stowage-testkit",
                         "kernelVersion": "", "osImage": "", "kubeProxyVersion": "",
                         "machineID": "", "systemUUID": "", "bootID": ""},
        },
    }))
    .unwrap();
    match Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &obj)
        .await
    {
        Ok(_) => {}
        Err(::kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("register node {}: {e}", node.name),
    }
}

fn ready_condition() -> Value {
    let now = now();
    json!({"type": "Ready", "status": "True", "reason": "KubeletReady",
           "message": "process kubelet is posting ready status",
           "lastHeartbeatTime": now, "lastTransitionTime": now})
}

fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap()
        .to_string()
}

fn now_micro() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Microsecond)
        .unwrap()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

/// Renews the node's Lease and Ready condition, as the kubelet does: the node
/// lifecycle controller taints a node whose heartbeats stop.
async fn heartbeat(client: Client, node: String) {
    use k8s_openapi::api::coordination::v1::Lease;
    let leases = Api::<Lease>::namespaced(client.clone(), "kube-node-lease");
    let nodes = Api::<Node>::all(client);
    let params = PatchParams::apply("process-kubelet").force();
    loop {
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": node},
            "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": now_micro()},
        });
        let _ = leases.patch(&node, &params, &Patch::Apply(&lease)).await;
        let status = json!({"status": {"conditions": [ready_condition()]}});
        let _ = nodes
            .patch_status(&node, &PatchParams::default(), &Patch::Strategic(&status))
            .await;
        tokio::time::sleep(HEARTBEAT).await;
    }
}

/// Watches the pods bound to `node`: starts new ones, kills deleted ones.
async fn serve(shared: Arc<Shared>, client: Client, node: String) {
    let pods = Api::<Pod>::all(client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut stream = watcher(pods, config).default_backoff().boxed();
    while let Some(event) = stream.next().await {
        let Ok(event) = event else { continue };
        match event {
            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => {
                on_pod(&shared, &client, pod).await;
            }
            watcher::Event::Delete(pod) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                if let Some(mut p) = shared.procs.lock().unwrap().remove(&uid)
                    && let Some(k) = p.kill.take()
                {
                    let _ = k.send(());
                }
            }
            _ => {}
        }
    }
}

async fn on_pod(shared: &Arc<Shared>, client: &Client, pod: Pod) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    if pod.metadata.deletion_timestamp.is_some() {
        let running = shared.procs.lock().unwrap().remove(&uid);
        if let Some(mut p) = running
            && let Some(k) = p.kill.take()
        {
            let _ = k.send(());
        }
        // The kubelet confirms that the pod's containers are gone (finalizers, such as
        // the Job controller's, keep the object until their controller is done).
        let _ = Api::<Pod>::namespaced(client.clone(), &ns)
            .delete(&name, &DeleteParams::default().grace_period(0))
            .await;
        return;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
    if matches!(phase.as_deref(), Some("Succeeded" | "Failed")) {
        return;
    }
    let mut procs = shared.procs.lock().unwrap();
    if procs.contains_key(&uid) {
        return;
    }
    let (kill_tx, kill_rx) = oneshot::channel();
    procs.insert(
        uid,
        Proc {
            kill: Some(kill_tx),
        },
    );
    drop(procs);
    tokio::spawn(run_pod(shared.clone(), client.clone(), pod, kill_rx));
}

/// Why a pod cannot start yet: the waiting reason and message the kubelet reports.
struct NotYet(&'static str, String);

async fn run_pod(shared: Arc<Shared>, client: Client, pod: Pod, mut kill: oneshot::Receiver<()>) {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let dir = shared
        .root
        .join(format!("{ns}_{name}_{}", &uid[..8.min(uid.len())]));
    let started = loop {
        match prepare(&shared, &client, &pod, &dir).await {
            Ok(p) => break p,
            Err(NotYet(reason, message)) => {
                let c = &pod.spec.as_ref().expect("spec").containers[0];
                let status = json!({"status": {
                    "phase": "Pending",
                    "containerStatuses": [{"name": c.name, "image": c.image, "imageID": "",
                        "ready": false, "started": false, "restartCount": 0,
                        "state": {"waiting": {"reason": reason, "message": message}}}],
                }});
                let _ = pods
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                    .await;
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => continue,
                    _ = &mut kill => return,
                }
            }
        }
    };
    shared
        .runs
        .lock()
        .unwrap()
        .insert((ns.clone(), name.clone()), dir.clone());
    let c = &pod.spec.as_ref().expect("spec").containers[0];
    let started_at = now();
    let running = |cs: Vec<Value>| {
        json!({"status": {
            "phase": "Running", "startTime": started_at, "hostIP": "127.0.0.1", "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "conditions": conditions(true, ""),
            "containerStatuses": cs,
        }})
    };
    let Some(mut child) = started else {
        // An app pod: it runs until it is deleted.
        let cs: Vec<Value> = pod
            .spec
            .as_ref()
            .expect("spec")
            .containers
            .iter()
            .map(|c| {
                json!({
            "name": c.name, "image": c.image, "imageID": "", "ready": true, "started": true,
            "restartCount": 0, "containerID": format!("process://{uid}"),
            "state": {"running": {"startedAt": started_at}}})
            })
            .collect();
        let _ = pods
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&running(cs)))
            .await;
        let _ = kill.await;
        return;
    };
    let container_id = format!("process://{}", child.0.id().unwrap_or(0));
    let cs = vec![
        json!({"name": c.name, "image": c.image, "imageID": "", "ready": true,
        "started": true, "restartCount": 0, "containerID": container_id,
        "state": {"running": {"startedAt": started_at}}}),
    ];
    let _ = pods
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&running(cs)))
        .await;
    let status = tokio::select! {
        s = child.0.wait() => s,
        _ = &mut kill => {
            // Closing the keeper's stdin kills the program.
            drop(child.1.take());
            child.0.wait().await
        }
    };
    let code = status.ok().and_then(|s| s.code()).unwrap_or(137);
    let mut message = podrun::termination_message(&dir.join("termination-log"));
    let policy = c.termination_message_policy.as_deref().unwrap_or("File");
    if message.is_empty() && code != 0 && policy == "FallbackToLogsOnError" {
        message = podrun::log_tail(&dir.join("stderr"));
    }
    let mut terminated = json!({"exitCode": code,
        "reason": if code == 0 { "Completed" } else { "Error" },
        "startedAt": started_at, "finishedAt": now(), "containerID": container_id});
    if !message.is_empty() {
        terminated["message"] = json!(message);
    }
    let status = json!({"status": {
        "phase": if code == 0 { "Succeeded" } else { "Failed" },
        "conditions": conditions(false, "PodCompleted"),
        "containerStatuses": [{"name": c.name, "image": c.image, "imageID": "", "ready": false,
            "started": false, "restartCount": 0, "containerID": container_id,
            "state": {"terminated": terminated}}],
    }});
    let _ = pods
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await;
    // The entry stays (without a process) until the pod is deleted: a late event of
    // the running pod must not start it again.
    if let Some(p) = shared.procs.lock().unwrap().get_mut(&uid) {
        p.kill = None;
    }
}

fn conditions(ready: bool, reason: &str) -> Value {
    let now = now();
    let r = if ready { "True" } else { "False" };
    let mut out = vec![
        json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": now}),
        json!({"type": "Initialized", "status": "True", "lastTransitionTime": now}),
    ];
    for t in ["ContainersReady", "Ready"] {
        let mut c = json!({"type": t, "status": r, "lastTransitionTime": now});
        if !reason.is_empty() {
            c["reason"] = json!(reason);
        }
        out.push(c);
    }
    json!(out)
}

/// A started program: its keeper shell and the keeper's stdin.
type Started = (tokio::process::Child, Option<tokio::process::ChildStdin>);

/// Volumes, env and the process of a pod; `Ok(None)` for a pod without a binary.
async fn prepare(
    shared: &Shared,
    client: &Client,
    pod: &Pod,
    dir: &Path,
) -> Result<Option<Started>, NotYet> {
    let spec = pod.spec.as_ref().expect("spec");
    let c = &spec.containers[0];
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let image = c.image.as_deref().unwrap_or_default();
    let volumes = volume_dirs(client, pod, dir).await?;
    let binary = shared.binaries.get(image_repository(image)).cloned();
    let Some(binary) = binary else {
        return Ok(None);
    };
    let env = container_env(client, pod).await?;
    materialise(client, pod, &volumes).await?;

    let root = dir.join("root");
    let fail = |e: std::io::Error| NotYet("ContainerCreating", format!("pod directory: {e}"));
    std::fs::create_dir_all(&root).map_err(fail)?;
    // The mounts: <root>/<mountPath> is the volume's directory.
    for m in c.volume_mounts.iter().flatten() {
        let Some(vol) = volumes.get(&m.name) else {
            continue;
        };
        let target = match m.sub_path.as_deref() {
            Some(sub) if !sub.is_empty() => {
                let t = vol.join(sub);
                std::fs::create_dir_all(&t).map_err(fail)?;
                t
            }
            _ => vol.clone(),
        };
        let link = in_root(&root, &m.mount_path);
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent).map_err(fail)?;
        }
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link).map_err(fail)?;
    }
    let term_path = c
        .termination_message_path
        .as_deref()
        .unwrap_or("/dev/termination-log");
    let term = dir.join("termination-log");
    std::fs::write(&term, b"").map_err(fail)?;
    let link = in_root(&root, term_path);
    std::fs::create_dir_all(link.parent().expect("parent")).map_err(fail)?;
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&term, &link).map_err(fail)?;

    let env: Vec<(String, String)> = env
        .into_iter()
        .map(|(k, v)| {
            let v = map_value(&v, &root);
            (k, v)
        })
        .collect();
    let strings = |v: &Option<Vec<String>>| -> Vec<String> {
        v.iter()
            .flatten()
            .map(|x| map_value(&expand(x, &env), &root))
            .collect()
    };
    // command[0] stands for the image's entrypoint, which is the mapped binary.
    let mut args: Vec<String> = strings(&c.command).into_iter().skip(1).collect();
    args.extend(strings(&c.args));
    let workdir = match c.working_dir.as_deref() {
        Some(w) if !w.is_empty() => in_root(&root, w),
        _ => root.clone(),
    };
    std::fs::create_dir_all(&workdir).map_err(fail)?;
    let stdout = std::fs::File::create(dir.join("stdout")).map_err(fail)?;
    let stderr = std::fs::File::create(dir.join("stderr")).map_err(fail)?;

    // The program runs under a shell that kills it when the shell's stdin closes: on
    // pod deletion, and when the test process exits however it exits.
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(r#"exec 3<&0; "$@" </dev/null & p=$!; (trap '' TERM; read _ <&3; kill -9 $p 2>/dev/null) & wait $p"#)
        .arg(name)
        .arg(&binary)
        .args(&args)
        .current_dir(&workdir)
        .env_clear()
        .stdin(std::process::Stdio::piped())
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(true);
    for key in ["PATH", "RUST_LOG", "RUST_BACKTRACE"] {
        if let Ok(v) = std::env::var(key) {
            cmd.env(key, v);
        }
    }
    let port = shared.cp.server.rsplit(':').next().unwrap_or_default();
    cmd.env("HOME", &root)
        .env("HOSTNAME", name)
        .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        .env("KUBERNETES_SERVICE_PORT", port);
    let token_dir = in_root(&root, TOKEN_DIR);
    if token_dir.join("token").exists() {
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority: {}\n\
                 users:\n- name: u\n  user:\n    tokenFile: {}\n\
                 contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\n    namespace: {ns}\n\
                 current-context: c\n",
                shared.cp.server,
                token_dir.join("ca.crt").display(),
                token_dir.join("token").display()
            ),
        )
        .map_err(fail)?;
        cmd.env("KUBECONFIG", &kubeconfig);
    }
    cmd.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let mut child = cmd.spawn().map_err(|e| {
        NotYet(
            "RunContainerError",
            format!("start {}: {e}", binary.display()),
        )
    })?;
    let stdin = child.stdin.take();
    Ok(Some((child, stdin)))
}

/// Host directories of the pod's volumes, or why the pod cannot start yet.
async fn volume_dirs(
    client: &Client,
    pod: &Pod,
    dir: &Path,
) -> Result<HashMap<String, PathBuf>, NotYet> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let mut dirs = HashMap::new();
    for v in pod.spec.as_ref().expect("spec").volumes.iter().flatten() {
        let d = if let Some(claim) = &v.persistent_volume_claim {
            let pending = || {
                NotYet(
                    "ContainerCreating",
                    format!(
                        "waiting for persistentvolumeclaim \"{}\" to be bound",
                        claim.claim_name
                    ),
                )
            };
            let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
                .get_opt(&claim.claim_name)
                .await
                .ok()
                .flatten()
                .ok_or_else(pending)?;
            let bound = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
            let pv_name = pvc.spec.as_ref().and_then(|s| s.volume_name.clone());
            let (true, Some(pv_name)) = (bound, pv_name) else {
                return Err(pending());
            };
            let pv = Api::<PersistentVolume>::all(client.clone())
                .get_opt(&pv_name)
                .await
                .ok()
                .flatten()
                .ok_or_else(pending)?;
            let spec = pv.spec.unwrap_or_default();
            let path = spec
                .local
                .map(|l| l.path)
                .or(spec.host_path.map(|h| h.path))
                .ok_or_else(|| {
                    NotYet(
                        "ContainerCreating",
                        format!("PV {pv_name} has no local or hostPath directory"),
                    )
                })?;
            PathBuf::from(path)
        } else if let Some(h) = &v.host_path {
            PathBuf::from(&h.path)
        } else {
            dir.join("volumes").join(&v.name)
        };
        dirs.insert(v.name.clone(), d);
    }
    Ok(dirs)
}

/// The data of a Secret or ConfigMap (`Ok(None)`: optional and missing).
async fn lookup(
    client: &Client,
    ns: &str,
    kind: Kind,
    name: &str,
    optional: bool,
) -> Result<Option<Data>, NotYet> {
    let mut sources = Sources::new();
    sources.insert(
        (kind, name.to_string()),
        fetch(client, ns, kind, name).await,
    );
    podrun::lookup(&sources, kind, name, optional)
        .map(|d| d.cloned())
        .map_err(|e| NotYet("CreateContainerConfigError", e))
}

/// A Secret's or ConfigMap's data, `None` when there is none.
async fn fetch(client: &Client, ns: &str, kind: Kind, name: &str) -> Option<Data> {
    match kind {
        Kind::Secret => Api::<Secret>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await
            .ok()
            .flatten()
            .map(podrun::secret_data),
        Kind::ConfigMap => Api::<ConfigMap>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await
            .ok()
            .flatten()
            .map(podrun::config_map_data),
    }
}

/// The container's environment, as the kubelet builds it (`podrun::container_env`
/// over the objects it names).
async fn container_env(client: &Client, pod: &Pod) -> Result<Vec<(String, String)>, NotYet> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let c = &pod.spec.as_ref().expect("spec").containers[0];
    let mut sources = Sources::new();
    for (kind, name) in podrun::env_sources(c) {
        let data = fetch(client, ns, kind, &name).await;
        sources.insert((kind, name), data);
    }
    podrun::container_env(pod, c, &sources, str::to_string)
        .map_err(|e| NotYet("CreateContainerConfigError", e))
}

/// Writes Secret, ConfigMap and projected volumes and creates emptyDirs.
async fn materialise(
    client: &Client,
    pod: &Pod,
    dirs: &HashMap<String, PathBuf>,
) -> Result<(), NotYet> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let spec = pod.spec.as_ref().expect("spec");
    let io = |v: &str| {
        let v = v.to_string();
        move |e: std::io::Error| {
            NotYet(
                "ContainerCreating",
                format!("MountVolume.SetUp failed for volume \"{v}\" : {e}"),
            )
        }
    };
    let mount_error = |v: &str, e: NotYet| {
        NotYet(
            "ContainerCreating",
            format!("MountVolume.SetUp failed for volume \"{v}\" : {}", e.1),
        )
    };
    for v in spec.volumes.iter().flatten() {
        let dir = &dirs[&v.name];
        if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let data = lookup(client, ns, Kind::Secret, &name, s.optional.unwrap_or(false))
                .await
                .map_err(|e| mount_error(&v.name, e))?
                .unwrap_or_default();
            write_files(dir, &data, s.items.as_deref(), s.default_mode).map_err(io(&v.name))?;
        } else if let Some(c) = &v.config_map {
            let data = lookup(
                client,
                ns,
                Kind::ConfigMap,
                &c.name,
                c.optional.unwrap_or(false),
            )
            .await
            .map_err(|e| mount_error(&v.name, e))?
            .unwrap_or_default();
            write_files(dir, &data, c.items.as_deref(), c.default_mode).map_err(io(&v.name))?;
        } else if let Some(p) = &v.projected {
            std::fs::create_dir_all(dir).map_err(io(&v.name))?;
            for src in p.sources.iter().flatten() {
                if let Some(t) = &src.service_account_token {
                    let token =
                        request_token(client, pod, t.audience.as_deref(), t.expiration_seconds)
                            .await
                            .map_err(|e| mount_error(&v.name, e))?;
                    let data = BTreeMap::from([(t.path.clone(), token.into_bytes())]);
                    write_files(dir, &data, None, p.default_mode).map_err(io(&v.name))?;
                }
                if let Some(c) = &src.config_map {
                    let data = lookup(
                        client,
                        ns,
                        Kind::ConfigMap,
                        &c.name,
                        c.optional.unwrap_or(false),
                    )
                    .await
                    .map_err(|e| mount_error(&v.name, e))?
                    .unwrap_or_default();
                    write_files(dir, &data, c.items.as_deref(), p.default_mode)
                        .map_err(io(&v.name))?;
                }
                if let Some(s) = &src.secret {
                    let data = lookup(
                        client,
                        ns,
                        Kind::Secret,
                        &s.name,
                        s.optional.unwrap_or(false),
                    )
                    .await
                    .map_err(|e| mount_error(&v.name, e))?
                    .unwrap_or_default();
                    write_files(dir, &data, s.items.as_deref(), p.default_mode)
                        .map_err(io(&v.name))?;
                }
                if let Some(d) = &src.downward_api {
                    for item in d.items.iter().flatten() {
                        if let Some(f) = &item.field_ref {
                            let data = BTreeMap::from([(
                                item.path.clone(),
                                podrun::field(pod, &f.field_path).into_bytes(),
                            )]);
                            write_files(dir, &data, None, item.mode.or(p.default_mode))
                                .map_err(io(&v.name))?;
                        }
                    }
                }
            }
        } else if v.persistent_volume_claim.is_none() && v.host_path.is_none() {
            std::fs::create_dir_all(dir).map_err(io(&v.name))?;
        }
    }
    Ok(())
}

/// A token of the pod's ServiceAccount bound to the pod (the TokenRequest API).
async fn request_token(
    client: &Client,
    pod: &Pod,
    audience: Option<&str>,
    expiration: Option<i64>,
) -> Result<String, NotYet> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .unwrap_or("default");
    let body = json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {
            "audiences": audience.map(|a| vec![a]).unwrap_or_default(),
            "expirationSeconds": expiration.unwrap_or(3607),
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod",
                               "name": pod.metadata.name, "uid": pod.metadata.uid},
        },
    });
    let req = http::Request::post(format!(
        "/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token"
    ))
    .header("content-type", "application/json")
    .body(serde_json::to_vec(&body).unwrap())
    .unwrap();
    let resp: Value = client.request(req).await.map_err(|e| {
        NotYet(
            "ContainerCreating",
            format!("token of serviceaccount {ns}/{sa}: {e}"),
        )
    })?;
    resp["status"]["token"]
        .as_str()
        .map(String::from)
        .ok_or_else(|| NotYet("ContainerCreating", "TokenRequest without a token".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_paths_map_into_the_pod_root_and_nothing_else_does() {
        let root = Path::new("/tmp/run/pods/p/root");
        assert_eq!(map_value("/data", root), "/tmp/run/pods/p/root/data");
        // A host-looking path in a pod spec is a pod path all the same: it cannot
        // name the host's /tmp.
        assert_eq!(
            map_value("/tmp/checkout/x", root),
            "/tmp/run/pods/p/root/tmp/checkout/x"
        );
        assert_eq!(
            map_value("--config=/etc/c.yaml", root),
            "--config=/tmp/run/pods/p/root/etc/c.yaml"
        );
        assert_eq!(
            map_value("s3:http://127.0.0.1:1/b", root),
            "s3:http://127.0.0.1:1/b"
        );
        assert_eq!(
            map_value("info,rustic_core=warn", root),
            "info,rustic_core=warn"
        );
        assert_eq!(map_value("a/relative", root), "a/relative");
    }

    #[test]
    fn image_repositories() {
        assert_eq!(
            image_repository("ghcr.io/s/stowage-mover:0.1.0"),
            "ghcr.io/s/stowage-mover"
        );
        assert_eq!(image_repository("reg:5000/s/m@sha256:ab"), "reg:5000/s/m");
        assert_eq!(image_repository("reg:5000/s/m"), "reg:5000/s/m");
        assert_eq!(image_repository("busybox"), "busybox");
    }

    #[test]
    fn the_shipped_images_name_the_workspace_binaries() {
        let images = shipped_images();
        assert_eq!(
            images
                .get("ghcr.io/stowage-backup/stowage-mover")
                .map(String::as_str),
            Some("stowage-mover")
        );
        assert_eq!(images.len(), 4, "{images:?}");
    }
}
