//! Stowage installed in a test world, made by one builder ([`World::builder`], a
//! [`WorldBuilder`] of chainable options): the stowage namespace and others, the
//! policies ConfigMap, the credentials Secret (the master password, the mover's and
//! gc's S3 keys: the shared Garage's or fixed strings), storage classes (optionally
//! judged safe by an earlier probe: a verdict in prewarm's ConfigMap), and where the
//! repositories live (a fresh bucket of the shared Garage, optionally behind a fault
//! proxy, else local directories). The builder makes one of two forms, both seeded by
//! the same [`Install`]:
//!
//! - [`WorldBuilder::build`]: a simulated cluster ([`World`]: nodes, the real
//!   `stowage-mover` or a stand-in as the image of mover Jobs). The programs run as
//!   processes of the real binaries; their outputs are kept so that a test can scan
//!   everything that was produced ([`World::scan`]).
//! - [`WorldBuilder::build_api`]: the fake API server alone ([`ApiWorld`]), for the
//!   crates' integration tests, which play the controllers themselves.
//!
//! Both dereference to their [`Install`], which holds what is the same in every world:
//! the repository of a PVC, its derived password, the environment of the mover CLI or
//! restic on it, a backup by the real mover.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolumeClaim, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::storage::v1::StorageClass;
use serde_json::json;
use stowage_common::env::SchedulerEnv;
use stowage_common::k8s::contract::prewarm::probe;
use stowage_common::k8s::contract::run_secret_keys::{RESTIC_PASSWORD, RESTIC_REPOSITORY};
use stowage_common::k8s::contract::{CRD_GROUP, CRD_KIND, POLICIES_KEY, secret_keys};
use stowage_common::k8s::credentials::derive_repository_password;
use stowage_common::k8s::naming::repository_for;

use crate::fakeapi::{FakeApi, Store};
use crate::proxy::FaultProxy;
use crate::secrets::SecretScan;
use crate::sim::{Cluster, ClusterOptions, NodeSpec, PvcSpec, StorageClassSpec};
use crate::{bins, garage, obj};

/// The scheduler's service account.
pub const SCHEDULER: &str = "system:serviceaccount:stowage:stowage-scheduler";
/// gc's service account.
pub const GC: &str = "system:serviceaccount:stowage:stowage-gc";
/// prewarm's service account.
pub const PREWARM: &str = "system:serviceaccount:stowage:stowage-prewarm";
/// How long a scenario waits for the cluster.
pub const WAIT: Duration = Duration::from_secs(120);
/// The policies of [`World::new`].
pub const POLICIES: &str = "hourly:\n  schedule: \"@hourly\"\n";

/// The stowage namespace and the names of its objects, as the programs look for them
/// by default.
fn names() -> stowage_common::env::ClusterEnv {
    SchedulerEnv::default().cluster
}

/// Text of a program's stdout and stderr.
pub fn log_of(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A PVC that stowage populates through the Restore object `restore` (the PVC's own
/// name: from its own backups).
pub fn restore_pvc(name: &str, restore: &str) -> PvcSpec {
    PvcSpec::new(name).data_source_ref(CRD_GROUP, CRD_KIND, restore)
}

/// Whether a PVC is Bound.
pub fn bound(s: &Store, ns: &str, pvc: &str) -> bool {
    s.get::<PersistentVolumeClaim>(ns, pvc)
        .and_then(|p| p.status?.phase)
        .as_deref()
        == Some("Bound")
}

/// S3 keys in the credentials Secret.
#[derive(Clone, Copy, Debug)]
pub enum Keys {
    /// The shared Garage's.
    Garage,
    /// Fixed strings (for a pass that never reaches S3).
    Fixed(&'static str, &'static str),
}

impl Keys {
    fn pair(self) -> (String, String) {
        match self {
            Keys::Garage => {
                let g = garage::shared();
                (g.access_key.clone(), g.secret_key.clone())
            }
            Keys::Fixed(id, secret) => (id.to_string(), secret.to_string()),
        }
    }
}

/// What a world is made of; see the module docs.
#[must_use]
pub struct WorldBuilder {
    master: String,
    namespaces: Vec<String>,
    policies: Option<String>,
    mover_keys: Option<Keys>,
    gc_keys: Option<Keys>,
    classes: Vec<(StorageClassSpec, bool)>,
    nodes: Vec<NodeSpec>,
    binaries: Vec<(String, PathBuf)>,
    bucket: Option<String>,
    prefix: Option<String>,
    proxy: bool,
}

impl WorldBuilder {
    /// Another namespace (the stowage namespace is always there).
    pub fn namespace(mut self, name: &str) -> Self {
        self.namespaces.push(name.into());
        self
    }

    /// The policies ConfigMap with this document (none: no ConfigMap).
    pub fn policies(mut self, yaml: &str) -> Self {
        self.policies = Some(yaml.into());
        self
    }

    /// The mover's S3 keys in the credentials Secret.
    pub fn mover_keys(mut self, keys: Keys) -> Self {
        self.mover_keys = Some(keys);
        self
    }

    /// gc's S3 keys in the credentials Secret.
    pub fn gc_keys(mut self, keys: Keys) -> Self {
        self.gc_keys = Some(keys);
        self
    }

    /// A storage class that no probe has judged yet.
    pub fn storage_class(mut self, class: StorageClassSpec) -> Self {
        self.classes.push((class, false));
        self
    }

    /// A storage class an earlier probe found safe for populating (its verdict is
    /// recorded, so prewarm does not probe it again).
    pub fn safe_storage_class(mut self, class: StorageClassSpec) -> Self {
        self.classes.push((class, true));
        self
    }

    /// A node of the simulator.
    pub fn node(mut self, node: NodeSpec) -> Self {
        self.nodes.push(node);
        self
    }

    /// An image the simulator runs as `path` (`stowage-mover`: the real mover unless
    /// given here).
    pub fn binary(mut self, image: &str, path: impl Into<PathBuf>) -> Self {
        self.binaries.push((image.into(), path.into()));
        self
    }

    /// Repositories in a fresh bucket of the shared Garage (named after `hint`), not in
    /// local directories.
    pub fn bucket(mut self, hint: &str) -> Self {
        self.bucket = Some(hint.into());
        self
    }

    /// Repositories under `prefix` in the bucket.
    pub fn bucket_prefix(mut self, prefix: &str) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// The programs reach Garage through a fault proxy ([`Install::proxy`]).
    pub fn fault_proxy(mut self) -> Self {
        self.proxy = true;
        self
    }

    /// The simulated cluster with stowage installed.
    pub fn build(self) -> World {
        let mut options =
            ClusterOptions::new().binary("stowage-mover", bins::path("stowage-mover"));
        for n in &self.nodes {
            options = options.node(n.clone());
        }
        for (c, _) in &self.classes {
            options = options.storage_class(c.clone());
        }
        for (image, path) in &self.binaries {
            options = options.binary(image, path);
        }
        let cluster = Cluster::start(options);
        let install = self.install();
        install.seed(cluster.store());
        World {
            cluster,
            install,
            runs: Mutex::new(Vec::new()),
            prewarm_runs: AtomicUsize::new(0),
        }
    }

    /// The fake API server alone with stowage installed (nodes and binaries are the
    /// simulator's: not used).
    pub fn build_api(self) -> ApiWorld {
        let api = FakeApi::start();
        let install = self.install();
        // The simulator creates its classes itself; here they are objects only.
        for (c, _) in &install.classes {
            api.put::<StorageClass>(c.object());
        }
        install.seed(api.store());
        ApiWorld { api, install }
    }

    fn install(self) -> Install {
        let bucket = self.bucket.map(|hint| garage::shared().bucket(&hint));
        let path = bucket.as_ref().map(|b| match &self.prefix {
            Some(p) => format!("{b}/{p}"),
            None => b.clone(),
        });
        Install {
            master: self.master,
            namespaces: self.namespaces,
            policies: self.policies,
            mover_keys: self.mover_keys.map(Keys::pair),
            gc_keys: self.gc_keys.map(Keys::pair),
            classes: self.classes,
            bucket,
            path,
            proxy: self
                .proxy
                .then(|| FaultProxy::start(garage::shared().addr())),
            scratch: tempfile::tempdir().expect("scratch directory"),
        }
    }
}

/// Stowage as installed in a world: what was seeded, where its repositories live, and
/// the helpers on them.
pub struct Install {
    /// The master password.
    pub master: String,
    namespaces: Vec<String>,
    policies: Option<String>,
    mover_keys: Option<(String, String)>,
    gc_keys: Option<(String, String)>,
    classes: Vec<(StorageClassSpec, bool)>,
    bucket: Option<String>,
    /// `bucket[/prefix]`.
    path: Option<String>,
    proxy: Option<FaultProxy>,
    scratch: tempfile::TempDir,
}

impl Install {
    /// Creates the install's objects in `store` (again after a rebuild: what the GitOps
    /// repository re-applies).
    fn seed(&self, store: &Store) {
        let names = names();
        for ns in &self.namespaces {
            store
                .create::<Namespace>(&obj(json!({"metadata": {"name": ns}})))
                .expect("namespace");
        }
        if let Some(yaml) = &self.policies {
            store
                .create::<ConfigMap>(&obj(json!({
                    "metadata": {"name": names.policies_configmap,
                                 "namespace": names.system_namespace},
                    "data": {POLICIES_KEY: yaml}
                })))
                .expect("policies");
        }
        store.create(&self.credentials()).expect("credentials");
        let verdicts: BTreeMap<&str, String> = self
            .classes
            .iter()
            .filter(|(_, safe)| *safe)
            .map(|(c, _)| {
                let v = json!({"verdict": probe::SAFE, "provisioner": c.provisioner,
                               "judgedAt": "2026-11-23T09:00:00Z", "detail": "probe"});
                (c.name.as_str(), v.to_string())
            })
            .collect();
        if !verdicts.is_empty() {
            store
                .create::<ConfigMap>(&obj(json!({
                    "metadata": {"name": probe::CONFIGMAP, "namespace": names.system_namespace},
                    "data": verdicts
                })))
                .expect("probe verdicts");
        }
    }

    /// The credentials Secret of the install.
    pub fn credentials(&self) -> Secret {
        let names = names();
        let mut data = BTreeMap::from([(secret_keys::MASTER_PASSWORD, self.master.clone())]);
        if let Some((id, secret)) = &self.mover_keys {
            data.insert(secret_keys::MOVER_ACCESS_KEY_ID, id.clone());
            data.insert(secret_keys::MOVER_SECRET_ACCESS_KEY, secret.clone());
        }
        if let Some((id, secret)) = &self.gc_keys {
            data.insert(secret_keys::GC_ACCESS_KEY_ID, id.clone());
            data.insert(secret_keys::GC_SECRET_ACCESS_KEY, secret.clone());
        }
        obj(json!({
            "metadata": {"name": names.credentials_secret, "namespace": names.system_namespace},
            "stringData": data
        }))
    }

    /// The bucket of the repositories.
    pub fn bucket(&self) -> &str {
        self.bucket.as_deref().expect("a world with a bucket")
    }

    /// The fault proxy the programs reach Garage through.
    pub fn proxy(&self) -> &FaultProxy {
        self.proxy.as_ref().expect("a world with a fault proxy")
    }

    /// A directory of the test's own (local repositories live in `backups/`).
    pub fn scratch(&self) -> &Path {
        self.scratch.path()
    }

    /// `STOWAGE_REPOSITORY_BASE` (through the proxy if there is one).
    pub fn base(&self) -> String {
        match &self.path {
            Some(path) => {
                let endpoint = match &self.proxy {
                    Some(p) => &p.endpoint,
                    None => &garage::shared().endpoint,
                };
                format!("s3:{endpoint}/{path}")
            }
            None => self.scratch().join("backups").display().to_string(),
        }
    }

    /// The repository of a PVC, as the programs name it.
    pub fn repository(&self, ns: &str, pvc: &str) -> String {
        repository_for(&self.base(), ns, pvc)
    }

    /// The password stowage derives for `repository`.
    pub fn password(&self, repository: &str) -> String {
        derive_repository_password(&self.master, repository)
    }

    /// The environment of the `stowage-mover` CLI (or restic) on a PVC's repository:
    /// straight to Garage, past the fault proxy; the password is the one derived for
    /// the repository the programs name.
    pub fn repository_env(&self, ns: &str, pvc: &str) -> Vec<(String, String)> {
        let repo = self.repository(ns, pvc);
        let mut env = match &self.path {
            Some(path) => garage::shared().env(&format!("{path}/{ns}/{pvc}")),
            None => vec![(RESTIC_REPOSITORY.into(), repo.clone())],
        };
        env.push((RESTIC_PASSWORD.into(), self.password(&repo)));
        env
    }

    /// The `stowage-mover` CLI with `args` on a PVC's repository.
    pub fn mover(&self, ns: &str, pvc: &str, args: &[&str]) -> Output {
        Command::new(bins::path("stowage-mover"))
            .args(args)
            .env_clear()
            .envs(self.repository_env(ns, pvc))
            .output()
            .expect("stowage-mover")
    }

    /// Snapshots in the PVC's repository, through the mover's own listing.
    pub fn snapshots(&self, ns: &str, pvc: &str) -> Vec<serde_json::Value> {
        let out = self.mover(ns, pvc, &["snapshots", "--json"]);
        assert!(out.status.success(), "{}", log_of(&out));
        serde_json::from_slice(&out.stdout).expect("snapshot list")
    }

    /// Backs `dir` up as the volume `ns/pvc` by the real mover (past the fault proxy),
    /// with the derived password; returns the snapshot id.
    pub fn backup(&self, ns: &str, pvc: &str, dir: &Path) -> String {
        let password = self.password(&self.repository(ns, pvc));
        self.backup_with_password(ns, pvc, dir, &password)
    }

    /// The same with another password (a repository stowage cannot open).
    pub fn backup_with_password(&self, ns: &str, pvc: &str, dir: &Path, password: &str) -> String {
        let out = Command::new(bins::path("stowage-mover"))
            .arg("backup")
            .arg(dir)
            .env_clear()
            .envs(self.repository_env(ns, pvc))
            .env(RESTIC_PASSWORD, password)
            .env("STOWAGE_NAMESPACE", ns)
            .env("STOWAGE_PVC", pvc)
            .output()
            .expect("stowage-mover backup");
        assert!(out.status.success(), "{}", log_of(&out));
        let line = out
            .stdout
            .split(|b| *b == b'\n')
            .rfind(|l| l.starts_with(b"{"))
            .expect("the mover's result line");
        let r: serde_json::Value = serde_json::from_slice(line).expect("result JSON");
        r["snapshot"].as_str().expect("snapshot id").to_string()
    }
}

/// The fake API server with stowage installed.
pub struct ApiWorld {
    pub api: FakeApi,
    install: Install,
}

// Both forms share the install's helpers.
impl Deref for ApiWorld {
    type Target = Install;
    fn deref(&self) -> &Install {
        &self.install
    }
}

/// The simulated cluster with stowage installed, and the outputs of the programs run
/// in it.
pub struct World {
    pub cluster: Cluster,
    install: Install,
    runs: Mutex<Vec<(String, String)>>,
    prewarm_runs: AtomicUsize,
}

impl Deref for World {
    type Target = Install;
    fn deref(&self) -> &Install {
        &self.install
    }
}

impl World {
    /// A world without policies, keys, classes or a bucket; the stowage namespace and
    /// the credentials Secret with `master` as the master password.
    pub fn builder(master: &str) -> WorldBuilder {
        WorldBuilder {
            master: master.into(),
            namespaces: vec![names().system_namespace],
            policies: None,
            mover_keys: None,
            gc_keys: None,
            classes: Vec::new(),
            nodes: Vec::new(),
            binaries: Vec::new(),
            bucket: None,
            prefix: None,
            proxy: false,
        }
    }

    /// The world of the scheduler's scenarios: two nodes, a node-local default class,
    /// [`POLICIES`], the shared Garage's keys for the mover and gc, a fresh bucket.
    pub fn new(master: &str) -> Self {
        Self::builder(master)
            .node(NodeSpec::new("node-a"))
            .node(NodeSpec::new("node-b"))
            .storage_class(StorageClassSpec::local_csi("local").default_class())
            .policies(POLICIES)
            .mover_keys(Keys::Garage)
            .gc_keys(Keys::Garage)
            .bucket("e2e")
            .build()
    }

    /// Installs stowage again (after [`Cluster::wipe`]: a rebuilt cluster).
    pub fn reinstall(&self) {
        self.install.seed(self.cluster.store());
    }

    /// Replaces the policies document.
    pub fn set_policies(&self, yaml: &str) {
        let names = names();
        self.cluster
            .store()
            .modify::<ConfigMap>(&names.system_namespace, &names.policies_configmap, |c| {
                c.data = Some(BTreeMap::from([(
                    POLICIES_KEY.to_string(),
                    yaml.to_string(),
                )]));
            })
            .expect("policies ConfigMap");
    }

    /// The password derived for `repository` as an operator gets it:
    /// `stowage-scheduler repo-password` with the master password on stdin.
    fn operator_password(&self, repository: &str) -> String {
        use std::io::Write;
        let mut child = Command::new(bins::path("stowage-scheduler"))
            .args(["repo-password", repository])
            .env_clear()
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("stowage-scheduler repo-password");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(self.master.as_bytes())
            .expect("write master");
        let out = child.wait_with_output().expect("repo-password");
        assert!(out.status.success(), "{}", log_of(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The name of the app pod of a PVC: `app-<pvc>`, cut to 63 characters (the
    /// simulator also puts it in the pod's `app` label).
    pub fn app_pod(pvc: &str) -> String {
        let mut name: String = format!("app-{pvc}").chars().take(63).collect();
        while name.ends_with(['.', '-']) {
            name.pop();
        }
        name
    }

    /// A bound PVC with an app pod (uid 1000) on `node` and some files.
    pub async fn app(
        &self,
        ns: &str,
        pvc: &str,
        node: &str,
        labels: &[(&str, &str)],
        files: &[(&str, &str)],
    ) {
        let mut spec = PvcSpec::new(pvc).class("local").size("1Gi");
        for (k, v) in labels {
            spec = spec.label(k, v);
        }
        self.cluster.create_pvc(ns, &spec).expect("create PVC");
        self.cluster
            .create_app_pod(
                ns,
                &Self::app_pod(pvc),
                pvc,
                Some(node),
                Some((1000, 1000)),
                &[],
            )
            .expect("create app pod");
        let dir = self
            .cluster
            .wait_for(WAIT, |s| {
                let p: PersistentVolumeClaim = s.get(ns, pvc)?;
                (p.status?.phase.as_deref() == Some("Bound")).then_some(())
            })
            .await
            .map(|_| self.cluster.volume_dir(ns, pvc).expect("volume dir"))
            .expect("PVC bound");
        for (name, content) in files {
            std::fs::write(dir.join(name), content).expect("write file");
        }
    }

    /// What every program of the world is given (Garage over plain http).
    pub fn env(&self) -> Vec<(String, String)> {
        to_env(&[
            ("STOWAGE_REPOSITORY_BASE", self.base().as_str()),
            ("STOWAGE_ALLOW_HTTP", "true"),
            ("AWS_DEFAULT_REGION", garage::REGION),
            (
                "STOWAGE_MOVER_IMAGE",
                "ghcr.io/stowage-backup/stowage-mover:e2e",
            ),
            ("STOWAGE_LOG_FORMAT", "text"),
        ])
    }

    /// The scheduler's environment.
    pub fn scheduler_env(&self) -> Vec<(String, String)> {
        let mut env = self.env();
        env.extend(to_env(&[("STOWAGE_MAX_CONCURRENT_JOBS", "10")]));
        env
    }

    /// prewarm's environment: polling every second, retrying a restore after one.
    pub fn prewarm_env(&self) -> Vec<(String, String)> {
        let mut env = self.env();
        env.extend(to_env(&[
            ("STOWAGE_POLL_SECONDS", "1"),
            ("STOWAGE_RESTORE_BACKOFF_SECONDS", "1"),
        ]));
        env
    }

    /// Runs a program of the workspace as its CronJob would, as `user`; the output is
    /// kept for [`World::scan`].
    pub async fn run(
        &self,
        program: &str,
        args: &[&str],
        env: &[(String, String)],
        user: &str,
    ) -> Output {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let out = self
            .cluster
            .run_program(&bins::path(program), args, &env, user)
            .await;
        self.keep(program, log_of(&out));
        out
    }

    /// Keeps the output of a program run by the test itself, for [`World::scan`].
    pub fn keep(&self, what: &str, text: impl Into<String>) {
        self.runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((what.to_string(), text.into()));
    }

    /// One scheduler pass at `now`: (exit status 0, stdout and stderr).
    pub async fn scheduler(&self, now: &str) -> (bool, String) {
        self.scheduler_with(now, &[]).await
    }

    /// The same with `extra` settings.
    pub async fn scheduler_with(&self, now: &str, extra: &[(&str, &str)]) -> (bool, String) {
        let mut env = self.scheduler_env();
        env.extend(to_env(extra));
        let out = self
            .run("stowage-scheduler", &["--now", now], &env, SCHEDULER)
            .await;
        (out.status.success(), log_of(&out))
    }

    /// A prewarm run as its CronJob runs it (polling for up to 300 s, no index), with
    /// `extra` settings; returns the process and the name of its log
    /// ([`Cluster::program_log`]).
    pub fn spawn_prewarm(&self, extra: &[(&str, &str)]) -> (tokio::process::Child, String) {
        let n = self.prewarm_runs.fetch_add(1, Ordering::Relaxed) + 1;
        let name = format!("prewarm-{n}");
        let mut env = self.prewarm_env();
        env.extend(to_env(extra));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let child = self.cluster.spawn_program(
            &bins::path("stowage-prewarm"),
            &["--duration", "300", "--no-index"],
            &env,
            PREWARM,
            &name,
        );
        (child, name)
    }

    /// The log of the last run of [`World::spawn_prewarm`].
    pub fn last_prewarm_log(&self) -> String {
        let n = self.prewarm_runs.load(Ordering::Relaxed);
        self.cluster.program_log(&format!("prewarm-{n}"))
    }

    /// Waits until every Job has finished.
    pub async fn jobs_finished(&self) -> Vec<Job> {
        let r = self
            .cluster
            .wait_for(WAIT, |s| {
                let jobs: Vec<Job> = s.list(None);
                jobs.iter().all(job_finished).then_some(jobs)
            })
            .await;
        match r {
            Ok(j) => j,
            Err(_) => panic!(
                "mover Jobs did not finish:\n{}",
                self.cluster.all_pod_logs()
            ),
        }
    }

    /// An annotation of a PVC.
    pub fn ann(&self, ns: &str, pvc: &str, key: &str) -> Option<String> {
        let p: PersistentVolumeClaim = self.cluster.store().get(ns, pvc)?;
        p.metadata.annotations.unwrap_or_default().get(key).cloned()
    }

    /// Notes of the Events with `reason` on a PVC.
    pub fn events(&self, ns: &str, pvc: &str, reason: &str) -> Vec<String> {
        let all: Vec<Event> = self.cluster.store().list(Some(ns));
        all.into_iter()
            .filter(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(pvc)
            })
            .map(|e| e.note.unwrap_or_default())
            .collect()
    }

    /// A scan holding the secrets in use (the master password, the S3 secret key, the
    /// derived passwords of the PVCs' repositories `pvcs`) and everything produced so
    /// far: program outputs, pod logs, every object but Secrets.
    pub fn scan(&self, pvcs: &[(&str, &str)]) -> SecretScan {
        let mut scan = SecretScan::new();
        scan.secret("master password", &self.master)
            .secret("S3 secret key", &garage::shared().secret_key);
        for (ns, pvc) in pvcs {
            let repo = self.repository(ns, pvc);
            scan.secret(
                &format!("password of {ns}/{pvc}"),
                &self.operator_password(&repo),
            );
        }
        for (what, text) in self.runs.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            scan.text(what, text.clone());
        }
        scan.text("pod logs", self.cluster.all_pod_logs())
            .store(self.cluster.store());
        scan
    }
}

fn to_env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Whether a Job has finished (Complete or Failed).
pub fn job_finished(j: &Job) -> bool {
    j.status
        .as_ref()
        .and_then(|st| st.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        })
}

/// The prime PVCs of zero-touch restores in namespace `ns` of `store`.
pub fn prime_pvcs(store: &Store, ns: &str) -> Vec<PersistentVolumeClaim> {
    store
        .list::<PersistentVolumeClaim>(Some(ns))
        .into_iter()
        .filter(|p| {
            p.metadata.name.as_deref().is_some_and(|n| {
                n.starts_with(stowage_common::k8s::contract::prewarm::prime::NAME_PREFIX)
            })
        })
        .collect()
}

/// The PV binder's part on the fake API: every unbound PVC of namespace `ns` whose
/// name starts with `prefix` (`""`: every one) gets a volume and is `Bound`.
pub fn bind_claims(api: &FakeApi, ns: &str, prefix: &str) {
    use k8s_openapi::api::core::v1::PersistentVolume;
    for p in api.store().list::<PersistentVolumeClaim>(Some(ns)) {
        let name = p.metadata.name.clone().unwrap();
        let bound = p
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.as_ref())
            .is_some();
        if bound || !name.starts_with(prefix) {
            continue;
        }
        let pv = format!("pv-{name}");
        api.put::<PersistentVolume>(json!({
            "metadata": {"name": pv},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                     "hostPath": {"path": "/tmp/x"}, "storageClassName": "local",
                     "claimRef": {"namespace": ns, "name": name, "uid": p.metadata.uid}}
        }));
        api.store()
            .modify::<PersistentVolumeClaim>(ns, &name, |p| {
                p.spec.as_mut().unwrap().volume_name = Some(pv.clone());
                p.status = Some(obj(json!({"phase": "Bound"})));
            })
            .unwrap();
    }
}

/// A bound PVC `ns/name` on the fake API, with its PV and a running app pod (uid
/// 1000) on node-a.
pub fn bound_app_pvc(
    api: &FakeApi,
    ns: &str,
    name: &str,
    labels: serde_json::Value,
    annotations: serde_json::Value,
) -> PersistentVolumeClaim {
    use k8s_openapi::api::core::v1::{PersistentVolume, Pod};
    api.put::<PersistentVolume>(json!({
        "metadata": {"name": format!("pv-{ns}-{name}")},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                 "hostPath": {"path": "/tmp/x"}}
    }));
    api.put::<PersistentVolumeClaim>(json!({
        "metadata": {"name": name, "namespace": ns, "labels": labels, "annotations": annotations},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
                 "volumeName": format!("pv-{ns}-{name}")}
    }));
    let pvc = api
        .store()
        .modify::<PersistentVolumeClaim>(ns, name, |p| {
            p.status = Some(obj(
                json!({"phase": "Bound", "capacity": {"storage": "1Gi"}}),
            ));
        })
        .unwrap();
    api.put::<Pod>(json!({
        "metadata": {"name": format!("app-{name}"), "namespace": ns},
        "spec": {
            "nodeName": "node-a",
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000},
            "containers": [{"name": "app", "image": "app",
                            "volumeMounts": [{"name": "d", "mountPath": "/d"}]}],
            "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": name}}]
        }
    }));
    api.store()
        .modify::<Pod>(ns, &format!("app-{name}"), |p| {
            p.status = Some(obj(json!({"phase": "Running"})));
        })
        .unwrap();
    pvc
}
