//! A cluster simulator on top of the fake API's store: it plays the PV provisioner and
//! binder, the pod scheduler, the kubelet (running the containers of known images as
//! local processes of real binaries, with volumes as directories) and the Job
//! controller, so that the stowage programs can be driven end to end.
//!
//! Controllers work on the store directly (they are not in the audit log) and run on
//! the fake API's runtime: they react to every store change, and poll every 50 ms for
//! timers (Job deadlines). Tests wait with [`Cluster::wait_for`], never with sleeps.
//!
//! Known simplifications (documented where they matter): one container per pod is run
//! (the first; init containers are ignored), `restartPolicy` of run containers is
//! treated as `Never`, `securityContext` (runAsUser...) is not applied (processes run
//! as the test user), Job `ttlSecondsAfterFinished`, parallelism and retry back-off
//! delays are ignored, volume snapshots are copies of the volume directory
//! (snapshots.rs), and the PV/PVC protection finalizers only track pods.
//!
//! Why it stays beside the real control plane ([`crate::kube`]): the README's first
//! command runs the demo here on a fresh machine in seconds, without the 15-minute
//! control-plane build; pre-backup hooks need `pods/exec`, which the process kubelet
//! does not serve (the API server proxies exec to a kubelet's streaming endpoint over
//! SPDY/WebSocket: `exec.rs` plays it on the fake API); the Snapshot and Clone copy
//! methods need a CSI snapshot controller and a CSI driver (`snapshots.rs`); API fault
//! injection (errors, conflicts, latency on chosen requests) and the 1,000-PVC scale
//! runs need the fake API. Its Job controller, binder and garbage collector serve
//! those scenarios (and the demo); every other end-to-end scenario runs on the real
//! control plane's controllers (`tests/tests/kube/`).

mod controllers;
pub mod digest;
pub mod exec; // [copy methods & hooks] pods/exec as local processes
mod kubelet;
mod snapshots; // [copy methods & hooks] CSI snapshot controller

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Namespace, PersistentVolume, PersistentVolumeClaim, Pod, Toleration,
};
use serde_json::{Value, json};

use crate::fakeapi::{ApiError, FakeApi, Gvr, Store, write_kubeconfig};

/// The node label the scheduler and node-local volumes use.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
/// The PVC annotation through which the scheduler (or a populator) picks the node of a
/// WaitForFirstConsumer volume.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";

/// A node of the simulated cluster.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// Node name (also its `kubernetes.io/hostname` label).
    pub name: String,
    /// Extra labels.
    pub labels: BTreeMap<String, String>,
    /// Taints: (key, value, effect).
    pub taints: Vec<(String, String, String)>,
}

impl NodeSpec {
    /// A node without extra labels or taints.
    pub fn new(name: &str) -> Self {
        NodeSpec {
            name: name.into(),
            labels: BTreeMap::new(),
            taints: Vec::new(),
        }
    }

    /// Adds a label.
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.insert(k.into(), v.into());
        self
    }

    /// Adds a taint (`effect`: `NoSchedule`, `NoExecute`, `PreferNoSchedule`).
    pub fn taint(mut self, key: &str, value: &str, effect: &str) -> Self {
        self.taints.push((key.into(), value.into(), effect.into()));
        self
    }
}

/// `volumeBindingMode` of a storage class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindingMode {
    /// Provision as soon as the PVC exists.
    Immediate,
    /// Provision once a pod using the PVC is scheduled (selected-node annotation).
    WaitForFirstConsumer,
}

/// A storage class and how its (simulated) provisioner behaves.
#[derive(Clone, Debug)]
pub struct StorageClassSpec {
    /// Class name.
    pub name: String,
    /// `provisioner` field.
    pub provisioner: String,
    /// `volumeBindingMode`.
    pub binding: BindingMode,
    /// Volumes are bound to one node (PV `nodeAffinity` on `kubernetes.io/hostname`).
    pub node_local: bool,
    /// CSI-like: PVCs whose `dataSourceRef` names a foreign kind are left Pending for a
    /// volume populator. `false`: "naive" (like rancher.io/local-path), provisions
    /// them empty at once.
    pub respects_populators: bool,
    /// `reclaimPolicy`: `Delete` or `Retain`.
    pub reclaim_policy: String,
    /// Marked as the default class.
    pub default: bool,
}

impl StorageClassSpec {
    /// A node-local WaitForFirstConsumer CSI-like class (OpenEBS LocalPV style).
    pub fn local_csi(name: &str) -> Self {
        StorageClassSpec {
            name: name.into(),
            provisioner: "local.csi.openebs.io".into(),
            binding: BindingMode::WaitForFirstConsumer,
            node_local: true,
            respects_populators: true,
            reclaim_policy: "Delete".into(),
            default: false,
        }
    }

    /// rancher.io/local-path: node-local, WaitForFirstConsumer, ignores populators.
    pub fn local_path(name: &str) -> Self {
        StorageClassSpec {
            provisioner: "rancher.io/local-path".into(),
            respects_populators: false,
            ..Self::local_csi(name)
        }
    }

    /// A network-attached Immediate CSI-like class (any node).
    pub fn network(name: &str) -> Self {
        StorageClassSpec {
            name: name.into(),
            provisioner: "network.csi.example.com".into(),
            binding: BindingMode::Immediate,
            node_local: false,
            respects_populators: true,
            reclaim_policy: "Delete".into(),
            default: false,
        }
    }

    /// Changes the binding mode.
    pub fn binding(mut self, b: BindingMode) -> Self {
        self.binding = b;
        self
    }

    /// Changes the reclaim policy.
    pub fn reclaim(mut self, policy: &str) -> Self {
        self.reclaim_policy = policy.into();
        self
    }

    /// Marks as the default class.
    pub fn default_class(mut self) -> Self {
        self.default = true;
        self
    }

    /// The StorageClass object (JSON).
    pub fn object(&self) -> Value {
        let mut annotations = serde_json::Map::new();
        if self.default {
            annotations.insert(
                "storageclass.kubernetes.io/is-default-class".into(),
                json!("true"),
            );
        }
        json!({
            "metadata": {"name": self.name, "annotations": annotations},
            "provisioner": self.provisioner,
            "reclaimPolicy": self.reclaim_policy,
            "volumeBindingMode": match self.binding {
                BindingMode::Immediate => "Immediate",
                BindingMode::WaitForFirstConsumer => "WaitForFirstConsumer",
            },
        })
    }
}

/// What the simulated cluster is made of.
#[derive(Clone, Debug, Default)]
pub struct ClusterOptions {
    /// Nodes (none given: one node `node-1`).
    pub nodes: Vec<NodeSpec>,
    /// Storage classes.
    pub storage_classes: Vec<StorageClassSpec>,
    /// Namespaces created at start (besides `default`).
    pub namespaces: Vec<String>,
    /// Image name → executable: image `ghcr.io/x/stowage-mover:tag` runs the binary
    /// registered as `stowage-mover` (the repository basename without tag or digest).
    pub binaries: BTreeMap<String, PathBuf>,
}

impl ClusterOptions {
    /// Empty options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a node.
    pub fn node(mut self, n: NodeSpec) -> Self {
        self.nodes.push(n);
        self
    }

    /// Adds a storage class.
    pub fn storage_class(mut self, c: StorageClassSpec) -> Self {
        self.storage_classes.push(c);
        self
    }

    /// Adds a namespace created at start.
    pub fn namespace(mut self, n: &str) -> Self {
        self.namespaces.push(n.into());
        self
    }

    /// Maps an image name to an executable.
    pub fn binary(mut self, image: &str, path: impl Into<PathBuf>) -> Self {
        self.binaries.insert(image.into(), path.into());
        self
    }
}

/// `ghcr.io/x/stowage-mover:v1@sha256:..` → `stowage-mover`.
pub fn image_key(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    let base = no_digest.rsplit('/').next().unwrap_or(no_digest);
    base.split(':').next().unwrap_or(base)
}

/// A PVC to create with [`Cluster::create_pvc`].
#[derive(Clone, Debug)]
pub struct PvcSpec {
    /// Name.
    pub name: String,
    /// Storage class (`None`: the default class, if any).
    pub class: Option<String>,
    /// Requested size (`1Gi`).
    pub size: String,
    /// Access modes.
    pub access_modes: Vec<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// `spec.dataSourceRef` (apiGroup, kind, name, namespace).
    pub data_source_ref: Option<Value>,
}

impl PvcSpec {
    /// A 1Gi ReadWriteOnce PVC of the default class.
    pub fn new(name: &str) -> Self {
        PvcSpec {
            name: name.into(),
            class: None,
            size: "1Gi".into(),
            access_modes: vec!["ReadWriteOnce".into()],
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            data_source_ref: None,
        }
    }

    /// Sets the class.
    pub fn class(mut self, c: &str) -> Self {
        self.class = Some(c.into());
        self
    }

    /// Sets the size.
    pub fn size(mut self, s: &str) -> Self {
        self.size = s.into();
        self
    }

    /// Adds a label.
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.insert(k.into(), v.into());
        self
    }

    /// Adds an annotation.
    pub fn annotation(mut self, k: &str, v: &str) -> Self {
        self.annotations.insert(k.into(), v.into());
        self
    }

    /// Sets `spec.dataSourceRef` (`group` `""` for core).
    pub fn data_source_ref(mut self, group: &str, kind: &str, name: &str) -> Self {
        self.data_source_ref = Some(json!({"apiGroup": group, "kind": kind, "name": name}));
        self
    }

    /// The PVC object in namespace `ns`.
    pub fn build(&self, ns: &str) -> PersistentVolumeClaim {
        let mut spec = json!({
            "accessModes": self.access_modes,
            "resources": {"requests": {"storage": self.size}},
        });
        if let Some(c) = &self.class {
            spec["storageClassName"] = json!(c);
        }
        if let Some(d) = &self.data_source_ref {
            spec["dataSourceRef"] = d.clone();
        }
        serde_json::from_value(json!({
            "metadata": {"name": self.name, "namespace": ns, "labels": self.labels, "annotations": self.annotations},
            "spec": spec,
        }))
        .expect("valid PVC")
    }
}

/// A wait that ran out of time.
#[derive(Debug)]
pub struct Timeout(pub Duration);

impl std::fmt::Display for Timeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "condition not met within {:?}", self.0)
    }
}

impl std::error::Error for Timeout {}

/// Shared by the controllers and the handle.
pub(crate) struct Inner {
    pub store: Arc<Store>,
    pub options: ClusterOptions,
    pub url: String,
    pub root: PathBuf,
    pub kubelet: Mutex<kubelet::Kubelet>,
}

impl Inner {
    pub fn volumes_dir(&self) -> PathBuf {
        self.root.join("volumes")
    }

    pub fn kubeconfig_for(&self, user: &str) -> PathBuf {
        let dir = self.root.join("kubeconfigs");
        std::fs::create_dir_all(&dir).expect("kubeconfig dir");
        write_kubeconfig(&self.url, &dir, user)
    }

    /// The simulator's knowledge of a class; classes created later through the API
    /// get network-like defaults.
    pub fn class_spec(&self, name: &str) -> Option<StorageClassSpec> {
        let obj = self.store.get_json(
            &Gvr::new("storage.k8s.io", "v1", "storageclasses"),
            "",
            name,
        )?;
        let mut spec = self
            .options
            .storage_classes
            .iter()
            .find(|c| c.name == name)
            .cloned()
            .unwrap_or_else(|| StorageClassSpec::network(name));
        spec.provisioner = obj["provisioner"].as_str().unwrap_or("").to_string();
        spec.binding = match obj["volumeBindingMode"].as_str() {
            Some("WaitForFirstConsumer") => BindingMode::WaitForFirstConsumer,
            _ => BindingMode::Immediate,
        };
        spec.reclaim_policy = obj["reclaimPolicy"]
            .as_str()
            .unwrap_or("Delete")
            .to_string();
        Some(spec)
    }

    /// Creates nodes, namespaces and storage classes from the options.
    fn populate(&self) {
        let mut nodes = self.options.nodes.clone();
        if nodes.is_empty() {
            nodes.push(NodeSpec::new("node-1"));
        }
        for n in &nodes {
            let mut labels = n.labels.clone();
            labels.insert(HOSTNAME_LABEL.into(), n.name.clone());
            labels.insert("kubernetes.io/os".into(), "linux".into());
            let taints: Vec<Value> = n
                .taints
                .iter()
                .map(|(k, v, e)| json!({"key": k, "value": v, "effect": e}))
                .collect();
            let node = json!({
                "metadata": {"name": n.name, "labels": labels},
                "spec": {"taints": taints},
                "status": {"conditions": [{"type": "Ready", "status": "True"}],
                           "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                                         {"type": "Hostname", "address": n.name}]},
            });
            let _ = self.store.create_json(&Gvr::core("nodes"), "", node);
        }
        let mut namespaces = vec!["default".to_string()];
        namespaces.extend(self.options.namespaces.iter().cloned());
        for ns in namespaces {
            let _ = self.store.create_json(
                &Gvr::core("namespaces"),
                "",
                json!({"metadata": {"name": ns}}),
            );
        }
        for c in &self.options.storage_classes {
            let _ = self.store.create_json(
                &Gvr::new("storage.k8s.io", "v1", "storageclasses"),
                "",
                c.object(),
            );
        }
    }
}

/// A running simulated cluster. Dropping it stops the controllers and kills every
/// process it started.
pub struct Cluster {
    inner: Arc<Inner>,
    // Dropped last: its runtime runs the controllers and owns the processes.
    root: tempfile::TempDir,
    api: FakeApi,
}

impl Cluster {
    /// Starts the fake API and the controllers; nodes, namespaces and storage classes
    /// of `options` exist when this returns.
    pub fn start(options: ClusterOptions) -> Cluster {
        let api = FakeApi::start();
        let root = tempfile::Builder::new()
            .prefix("stowage-sim-")
            .tempdir()
            .expect("sim root");
        let inner = Arc::new(Inner {
            store: api.store().clone(),
            options,
            url: api.url(),
            root: root.path().to_path_buf(),
            kubelet: Mutex::new(kubelet::Kubelet::default()),
        });
        std::fs::create_dir_all(inner.volumes_dir()).expect("volumes dir");
        inner.populate();
        let ctl = inner.clone();
        api.handle()
            .spawn(async move { controllers::run(ctl).await });
        // [copy methods & hooks] snapshot controller and pods/exec (snapshots.rs, exec.rs)
        api.handle().spawn(snapshots::run(inner.clone()));
        api.set_exec_handler(exec::handler(inner.clone()));
        Cluster { inner, root, api }
    }

    /// The fake API server.
    pub fn api(&self) -> &FakeApi {
        &self.api
    }

    /// The store (direct access).
    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    /// The simulator's root directory (volumes, pod logs, kubeconfigs).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// A kubeconfig file for `user` (bearer token).
    pub fn kubeconfig_for(&self, user: &str) -> PathBuf {
        self.inner.kubeconfig_for(user)
    }

    /// Waits until `check` returns `Some`, re-checking after every store change (and
    /// every 100 ms, for conditions on files or processes).
    pub async fn wait_for<T>(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&Store) -> Option<T>,
    ) -> Result<T, Timeout> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.inner.store.subscribe();
        loop {
            changes.borrow_and_update();
            if let Some(t) = check(&self.inner.store) {
                return Ok(t);
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = tokio::time::sleep_until(deadline) => return Err(Timeout(timeout)),
            }
        }
    }

    /// The directory of the PV bound to a PVC.
    pub fn volume_dir(&self, ns: &str, pvc: &str) -> Option<PathBuf> {
        let claim = self.store().get::<PersistentVolumeClaim>(ns, pvc)?;
        let pv_name = claim.spec?.volume_name?;
        let pv = self.store().get::<PersistentVolume>("", &pv_name)?;
        pv.spec?.host_path.map(|h| PathBuf::from(h.path))
    }

    /// Creates a namespace (phase Active).
    pub fn create_namespace(
        &self,
        name: &str,
        labels: &[(&str, &str)],
    ) -> Result<Namespace, ApiError> {
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))
                .expect("namespace");
        self.store().create(&ns)
    }

    /// Creates a PVC.
    pub fn create_pvc(&self, ns: &str, spec: &PvcSpec) -> Result<PersistentVolumeClaim, ApiError> {
        self.store().create(&spec.build(ns))
    }

    /// Creates an application pod (an image the simulator does not run: it just
    /// becomes Running) mounting `pvc` at `/data`, pinned to `node` by nodeSelector,
    /// with the given `runAsUser`/`runAsGroup` and tolerations.
    pub fn create_app_pod(
        &self,
        ns: &str,
        name: &str,
        pvc: &str,
        node: Option<&str>,
        run_as: Option<(i64, i64)>,
        tolerations: &[Toleration],
    ) -> Result<Pod, ApiError> {
        let mut spec = json!({
            "containers": [{
                "name": "app",
                "image": "registry.example/app:1",
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            }],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": pvc}}],
            "tolerations": tolerations,
        });
        if let Some(n) = node {
            spec["nodeSelector"] = json!({HOSTNAME_LABEL: n});
        }
        if let Some((uid, gid)) = run_as {
            spec["securityContext"] = json!({"runAsUser": uid, "runAsGroup": gid});
        }
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
            "spec": spec,
        }))
        .expect("pod");
        self.store().create(&pod)
    }

    /// Stdout and stderr of the last pod called `ns/name` that ran a process.
    pub fn pod_logs(&self, ns: &str, name: &str) -> String {
        let dir = self
            .inner
            .kubelet
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .log_dir(ns, name);
        match dir {
            Some(d) => {
                let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap_or_default();
                format!(
                    "--- stdout\n{}--- stderr\n{}",
                    read("stdout"),
                    read("stderr")
                )
            }
            None => String::new(),
        }
    }

    /// Logs of every pod that ran a process, for failure output.
    pub fn all_pod_logs(&self) -> String {
        let pods = self
            .inner
            .kubelet
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .all_runs();
        pods.iter()
            .map(|(ns, name)| format!("===== pod {ns}/{name}\n{}", self.pod_logs(ns, name)))
            .collect()
    }

    /// Kills the process of a running pod (SIGKILL): the pod fails with exit code 137.
    /// Returns whether there was such a process.
    pub fn kill_pod(&self, ns: &str, name: &str) -> bool {
        self.inner
            .kubelet
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .kill_by_name(ns, name)
    }

    /// Rebuilds the cluster: kills every process, empties the API, optionally removes
    /// the old volume directories, then re-creates the nodes, namespaces and storage
    /// classes of the options. What lives outside (S3) is untouched.
    pub async fn wipe(&self, keep_volumes: bool) {
        let waits = {
            let mut k = self.inner.kubelet.lock().unwrap_or_else(|e| e.into_inner());
            let waits = k.kill_all();
            self.inner.store.wipe();
            waits
        };
        for w in waits {
            let _ = w.await;
        }
        if !keep_volumes {
            controllers::remove_tree(&self.inner.volumes_dir());
            std::fs::create_dir_all(self.inner.volumes_dir()).expect("volumes dir");
        }
        self.inner.populate();
    }

    /// Runs a program once, as a CronJob run would (but as a local process, no pod):
    /// `KUBECONFIG` points at a kubeconfig for `user`; the environment is otherwise
    /// only `PATH`, `HOME`, `RUST_LOG`/`RUST_BACKTRACE` if set, and `env`.
    pub async fn run_program(
        &self,
        binary: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        user: &str,
    ) -> std::process::Output {
        let mut cmd = tokio::process::Command::new(binary);
        cmd.args(args).env_clear().kill_on_drop(true);
        for k in ["PATH", "HOME", "RUST_LOG", "RUST_BACKTRACE"] {
            if let Ok(v) = std::env::var(k) {
                cmd.env(k, v);
            }
        }
        cmd.env("KUBECONFIG", self.kubeconfig_for(user));
        cmd.envs(env.iter().map(|(k, v)| (*k, *v)));
        cmd.stdin(std::process::Stdio::null());
        cmd.output().await.expect("run program")
    }

    /// Starts a program like [`Cluster::run_program`] but returns at once: the caller
    /// waits for what it should do (`wait_for`), then kills it or waits for its exit.
    /// Its stdout and stderr go to `<root>/programs/<log_name>.{stdout,stderr}`.
    pub fn spawn_program(
        &self,
        binary: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        user: &str,
        log_name: &str,
    ) -> tokio::process::Child {
        let dir = self.root().join("programs");
        std::fs::create_dir_all(&dir).expect("programs dir");
        let out = std::fs::File::create(dir.join(format!("{log_name}.stdout"))).expect("log");
        let err = std::fs::File::create(dir.join(format!("{log_name}.stderr"))).expect("log");
        let mut cmd = tokio::process::Command::new(binary);
        cmd.args(args).env_clear().kill_on_drop(true);
        for k in ["PATH", "HOME", "RUST_LOG", "RUST_BACKTRACE"] {
            if let Ok(v) = std::env::var(k) {
                cmd.env(k, v);
            }
        }
        cmd.env("KUBECONFIG", self.kubeconfig_for(user));
        cmd.envs(env.iter().map(|(k, v)| (*k, *v)));
        cmd.stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err);
        cmd.spawn().expect("spawn program")
    }

    /// Output of a program started with [`Cluster::spawn_program`].
    pub fn program_log(&self, log_name: &str) -> String {
        let dir = self.root().join("programs");
        let read = |ext: &str| {
            std::fs::read_to_string(dir.join(format!("{log_name}.{ext}"))).unwrap_or_default()
        };
        format!("{}{}", read("stdout"), read("stderr"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut k = self.inner.kubelet.lock().unwrap_or_else(|e| e.into_inner());
        let _ = k.kill_all();
    }
}
