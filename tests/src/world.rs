//! A simulated cluster with stowage installed, the world of the end-to-end scenarios of
//! the scheduler: two nodes, a node-local default storage class, the stowage namespace
//! with the policies ConfigMap and the credentials Secret, repositories in a fresh
//! bucket of the shared Garage, and the real `stowage-mover` as the image of mover
//! Jobs. The programs run as processes of the real binaries; their outputs are kept
//! so that a test can scan everything that was produced ([`World::scan`]).

use std::collections::BTreeMap;
use std::process::Output;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret};
use k8s_openapi::api::events::v1::Event;
use serde_json::json;

use crate::secrets::SecretScan;
use crate::sim::{Cluster, ClusterOptions, NodeSpec, PvcSpec, StorageClassSpec};
use crate::{bins, garage, obj};

/// The scheduler's service account.
pub const SCHEDULER: &str = "system:serviceaccount:stowage:stowage-scheduler";
/// gc's service account.
pub const GC: &str = "system:serviceaccount:stowage:stowage-gc";
/// How long a scenario waits for the cluster.
pub const WAIT: Duration = Duration::from_secs(120);
/// The policies the world starts with.
pub const POLICIES: &str = "hourly:\n  schedule: \"@hourly\"\n";

/// The cluster, its bucket and the outputs of the programs run in it.
pub struct World {
    pub cluster: Cluster,
    pub bucket: String,
    /// `http://host:port` of Garage.
    pub endpoint: String,
    pub master: String,
    runs: Mutex<Vec<(String, String)>>,
}

/// Text of a program's stdout and stderr.
pub fn log_of(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

impl World {
    /// The world with `master` as the master password and [`POLICIES`].
    pub fn new(master: &str) -> Self {
        let g = garage::shared();
        let bucket = g.bucket("e2e");
        let cluster = Cluster::start(
            ClusterOptions::new()
                .node(NodeSpec::new("node-a"))
                .node(NodeSpec::new("node-b"))
                .storage_class(StorageClassSpec::local_csi("local").default_class())
                .namespace("stowage")
                .binary("stowage-mover", bins::path("stowage-mover")),
        );
        let store = cluster.store();
        store
            .create::<ConfigMap>(&obj(json!({
                "metadata": {"name": "stowage-policies", "namespace": "stowage"},
                "data": {"policies.yaml": POLICIES}
            })))
            .expect("policies");
        store
            .create::<Secret>(&obj(json!({
                "metadata": {"name": "stowage-credentials", "namespace": "stowage"},
                "stringData": {
                    "master-password": master,
                    "mover-access-key-id": g.access_key,
                    "mover-secret-access-key": g.secret_key,
                    "gc-access-key-id": g.access_key,
                    "gc-secret-access-key": g.secret_key,
                }
            })))
            .expect("credentials");
        World {
            cluster,
            bucket,
            endpoint: format!("http://{}", g.addr()),
            master: master.to_string(),
            runs: Mutex::new(Vec::new()),
        }
    }

    /// Replaces the policies document.
    pub fn set_policies(&self, yaml: &str) {
        self.cluster
            .store()
            .modify::<ConfigMap>("stowage", "stowage-policies", |c| {
                c.data = Some(BTreeMap::from([(
                    "policies.yaml".to_string(),
                    yaml.to_string(),
                )]));
            })
            .expect("policies ConfigMap");
    }

    /// `STOWAGE_REPOSITORY_BASE`.
    pub fn base(&self) -> String {
        format!("s3:{}/{}", self.endpoint, self.bucket)
    }

    /// The repository of a PVC.
    pub fn repository(&self, ns: &str, pvc: &str) -> String {
        format!("{}/{ns}/{pvc}", self.base())
    }

    /// The password stowage derives for `repository`, as an operator gets it:
    /// `stowage-scheduler repo-password` with the master password on stdin.
    pub fn repository_password(&self, repository: &str) -> String {
        use std::io::Write;
        let mut child = std::process::Command::new(bins::path("stowage-scheduler"))
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

    /// The scheduler's environment (Garage over plain http, opted in).
    pub fn scheduler_env(&self) -> Vec<(String, String)> {
        [
            ("STOWAGE_REPOSITORY_BASE", self.base().as_str()),
            ("STOWAGE_ALLOW_HTTP", "true"),
            ("AWS_DEFAULT_REGION", garage::REGION),
            ("STOWAGE_MAX_CONCURRENT_JOBS", "10"),
            (
                "STOWAGE_MOVER_IMAGE",
                "ghcr.io/stowage-backup/stowage-mover:e2e",
            ),
            ("STOWAGE_LOG_FORMAT", "text"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
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
        let out = self
            .run(
                "stowage-scheduler",
                &["--now", now],
                &self.scheduler_env(),
                SCHEDULER,
            )
            .await;
        (out.status.success(), log_of(&out))
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

    /// The environment of the `stowage-mover` CLI (or restic) on a PVC's repository.
    pub fn repository_env(&self, ns: &str, pvc: &str) -> Vec<(String, String)> {
        let repo = self.repository(ns, pvc);
        let mut env = garage::shared().env("x");
        env.retain(|(k, _)| k != "RESTIC_REPOSITORY");
        env.push(("RESTIC_PASSWORD".into(), self.repository_password(&repo)));
        env.push(("RESTIC_REPOSITORY".into(), repo));
        env
    }

    /// Snapshots in the PVC's repository, through the mover's own listing.
    pub fn snapshots(&self, ns: &str, pvc: &str) -> Vec<serde_json::Value> {
        let out = std::process::Command::new(bins::path("stowage-mover"))
            .args(["snapshots", "--json"])
            .env_clear()
            .envs(self.repository_env(ns, pvc))
            .output()
            .expect("stowage-mover snapshots");
        assert!(out.status.success(), "{}", log_of(&out));
        serde_json::from_slice(&out.stdout).expect("snapshot list")
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
                &self.repository_password(&repo),
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
