//! What the zero-touch restore scenarios on the real control plane share
//! (`tests/tests/kube/populate.rs`): stowage installed in a cluster ([`Env`]: the
//! process-wide one, or a cluster of its own with a new etcd for a rebuild), apps whose
//! PVCs name the `Restore` kind, prewarm and the scheduler run as users run them
//! (`kubectl create job --from=cronjob/...`), and what a test reads back (annotations,
//! Events, volume directories, snapshots in S3, the order in which the real
//! controllers acted).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ::kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use ::kube::runtime::{WatchStreamExt, watcher};
use ::kube::{Client, ResourceExt};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, PersistentVolume, PersistentVolumeClaim, Pod, ServiceAccount,
};
use k8s_openapi::api::events::v1::Event;
use serde_json::json;
use stowage_common::k8s::contract::prewarm as pc;

use super::install::{self, Stowage};
use super::scenario::{finished_job, job_has, restricted_pod_spec};
use super::{Cluster, ControlPlane, LOCAL_CLASS, NODES, WAIT, storage};

/// The label of the apps' PVCs that opts them in (policy `hourly`).
pub const BACKUP_LABEL: (&str, &str) = ("backup", "hourly");
/// The image of the apps' pods (no binary: the kubelet runs them without a process).
pub const APP_IMAGE: &str = "example.invalid/app:1";

/// A cluster with stowage installed.
#[derive(Clone, Copy)]
pub struct Env {
    pub c: &'static Cluster,
    pub installed: &'static Stowage,
}

/// A new control plane (its own etcd) with the nodes [`NODES`], the process kubelet
/// and the node-local class [`LOCAL_CLASS`]: a second cluster in the test process (it
/// lives until the process ends).
pub fn new_cluster() -> &'static Cluster {
    let cp: &'static ControlPlane = Box::leak(Box::new(ControlPlane::start()));
    Box::leak(Box::new(Cluster::start(cp)))
}

/// The outcome of one Job of a CronJob.
pub struct Run {
    pub job: Job,
    pub log: String,
}

impl Run {
    pub fn ok(&self) -> bool {
        job_has(&self.job, "Complete")
    }
}

impl Env {
    /// The process-wide cluster and install.
    pub async fn shared() -> Env {
        let c = super::cluster();
        Env {
            c,
            installed: install::stowage(c.cp),
        }
    }

    /// A new cluster ([`new_cluster`]) with stowage installed as `options` say.
    pub fn new(options: &install::Options) -> Env {
        let c = new_cluster();
        let installed = Box::leak(Box::new(install::stowage_with(c.cp, options)));
        Env { c, installed }
    }

    pub async fn client(&self) -> Client {
        self.c.cp.client().await
    }

    /// stowage's namespace.
    pub fn ns(&self) -> &'static str {
        &self.installed.namespace
    }

    /// Creates namespace `name` (Pod Security `restricted`) and returns once its
    /// `default` ServiceAccount exists.
    pub async fn namespace(&self, name: &str, labels: &[(&str, &str)]) {
        let client = self.client().await;
        let mut l: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        l.insert(
            "pod-security.kubernetes.io/enforce".into(),
            json!("restricted"),
        );
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": l}})).unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        let sas = Api::<ServiceAccount>::namespaced(client, name);
        let cond =
            ::kube::runtime::wait::await_condition(sas, "default", |sa: Option<&_>| sa.is_some());
        tokio::time::timeout(WAIT, cond)
            .await
            .unwrap_or_else(|_| panic!("no default ServiceAccount in {name} after {WAIT:?}"))
            .expect("watch serviceaccounts");
    }

    /// Deletes namespace `name` and returns once it is gone (its PVCs and their
    /// volumes with it).
    pub async fn delete_namespace(&self, name: &str) {
        let api = Api::<Namespace>::all(self.client().await);
        api.delete(name, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("delete namespace {name}: {e}"));
        let gone =
            ::kube::runtime::wait::await_condition(api, name, |n: Option<&Namespace>| n.is_none());
        tokio::time::timeout(WAIT, gone)
            .await
            .unwrap_or_else(|_| panic!("namespace {name} not gone after {WAIT:?}"))
            .expect("watch namespaces");
    }

    /// The app as written in Git: PVC `pvc` of `class` (opted in, `spec.dataSourceRef`
    /// to the `Restore` object `restore`, which may not exist: its own latest backup),
    /// and the app's pod `app-<pvc>` using it, pinned to `node`.
    pub async fn apply_app(&self, ns: &str, pvc: &str, class: &str, restore: &str, node: &str) {
        self.apply_claim(ns, pvc, class, restore, true).await;
        self.apply_pod(ns, pvc, node).await;
    }

    /// [`Env::apply_app`] with the PVC not opted in yet ([`Env::opt_in`] once the app
    /// has written): on the shared cluster a scheduler pass of another test would
    /// otherwise back up the volume while it is still empty.
    pub async fn apply_new_app(&self, ns: &str, pvc: &str, node: &str) {
        self.apply_claim(ns, pvc, LOCAL_CLASS, pvc, false).await;
        self.apply_pod(ns, pvc, node).await;
    }

    /// Labels PVC `ns/pvc` for backups ([`BACKUP_LABEL`]).
    pub async fn opt_in(&self, ns: &str, pvc: &str) {
        Api::<PersistentVolumeClaim>::namespaced(self.client().await, ns)
            .patch(
                pvc,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {BACKUP_LABEL.0: BACKUP_LABEL.1}}})),
            )
            .await
            .expect("label PVC");
    }

    /// The PVC of [`Env::apply_app`] alone (opted in to backups if `backup`).
    pub async fn apply_claim(&self, ns: &str, pvc: &str, class: &str, restore: &str, backup: bool) {
        let client = self.client().await;
        let labels = if backup {
            json!({BACKUP_LABEL.0: BACKUP_LABEL.1})
        } else {
            json!({})
        };
        let claim: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": pvc, "labels": labels},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
                     "resources": {"requests": {"storage": "1Gi"}},
                     "dataSourceRef": {"apiGroup": "stowage.io", "kind": "Restore", "name": restore}},
        }))
        .unwrap();
        Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &claim)
            .await
            .unwrap_or_else(|e| panic!("create PVC {ns}/{pvc}: {e}"));
    }

    /// The app's pod `app-<pvc>` of [`Env::apply_app`] alone.
    pub async fn apply_pod(&self, ns: &str, pvc: &str, node: &str) {
        let client = self.client().await;
        let mut spec = restricted_pod_spec();
        spec["containers"][0]["image"] = json!(APP_IMAGE);
        spec["containers"][0]["volumeMounts"] = json!([{"name": "data", "mountPath": "/srv"}]);
        spec["volumes"] = json!([{"name": "data", "persistentVolumeClaim": {"claimName": pvc}}]);
        spec["nodeSelector"] = json!({"kubernetes.io/hostname": node});
        let app: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("app-{pvc}"), "labels": {"app": pvc}},
            "spec": spec,
        }))
        .unwrap();
        Api::<Pod>::namespaced(client, ns)
            .create(&PostParams::default(), &app)
            .await
            .unwrap_or_else(|e| panic!("create pod {ns}/app-{pvc}: {e}"));
    }

    /// The app is removed from Git: its pod and PVC deleted; returns once both are gone.
    ///
    /// The finished mover Jobs of the namespace are deleted too: the real PVC
    /// protection controller keeps a PVC while any pod bound to a node names it,
    /// finished ones included, and a mover Job (with its pod) stays for its
    /// `ttlSecondsAfterFinished` (a day) or until gc removes it, so without this the
    /// PVC would stay Terminating (a defect the simulator does not show).
    pub async fn delete_app(&self, ns: &str, pvc: &str) {
        let client = self.client().await;
        Api::<Job>::namespaced(client.clone(), ns)
            .delete_collection(
                &DeleteParams::background(),
                &ListParams::default().labels("app.kubernetes.io/name=stowage-mover"),
            )
            .await
            .expect("delete the finished mover Jobs");
        let pods = Api::<Pod>::namespaced(client.clone(), ns);
        let pvcs = Api::<PersistentVolumeClaim>::namespaced(client, ns);
        let pod = format!("app-{pvc}");
        pods.delete(&pod, &DeleteParams::default())
            .await
            .expect("delete app pod");
        pvcs.delete(pvc, &DeleteParams::default())
            .await
            .expect("delete PVC");
        let pod_gone =
            ::kube::runtime::wait::await_condition(pods, &pod, |p: Option<&Pod>| p.is_none());
        let pvc_gone = ::kube::runtime::wait::await_condition(
            pvcs,
            pvc,
            |p: Option<&PersistentVolumeClaim>| p.is_none(),
        );
        let (pod, claim) = tokio::time::timeout(WAIT, async { futures::join!(pod_gone, pvc_gone) })
            .await
            .unwrap_or_else(|_| panic!("app {ns}/{pvc} not gone after {WAIT:?}"));
        pod.expect("watch pods");
        claim.expect("watch PVCs");
    }

    /// `kubectl create job --from=cronjob/<cronjob>`, awaited; the Job and its pod's log.
    pub async fn run(&self, cronjob: &str) -> Run {
        let client = self.client().await;
        let name = self.c.cp.unique_name(cronjob);
        self.start(cronjob, &name);
        let job = finished_job(&client, self.ns(), &name).await;
        Run {
            job,
            log: self.job_log(&client, &name).await,
        }
    }

    fn start(&self, cronjob: &str, name: &str) {
        install::create_job_in(self.c.cp, self.ns(), cronjob, name)
            .unwrap_or_else(|e| panic!("kubectl create job --from=cronjob/{cronjob}: {e}"));
    }

    /// The logs of the pods of Job `<stowage's namespace>/<name>`.
    async fn job_log(&self, client: &Client, name: &str) -> String {
        let pods = Api::<Pod>::namespaced(client.clone(), self.ns())
            .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={name}")))
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        pods.iter()
            .map(|p| {
                let pod = p.name_any();
                format!(
                    "--- pod {}/{pod}\n{}",
                    self.ns(),
                    self.c.kubelet.log(self.ns(), &pod)
                )
            })
            .collect()
    }

    /// Every log the kubelet has of pods in `namespaces` (and `stowage`'s), for a
    /// failing assertion.
    pub fn logs(&self, namespaces: &[&str]) -> String {
        let mut out = String::new();
        for (ns, pod) in self.c.kubelet.runs() {
            if ns == self.ns() || namespaces.contains(&ns.as_str()) {
                out.push_str(&format!(
                    "--- pod {ns}/{pod}\n{}\n",
                    self.c.kubelet.log(&ns, &pod)
                ));
            }
        }
        out
    }

    /// prewarm, run as users run it (Jobs from its CronJob, one after the other) until
    /// `check` holds; the Job running then is awaited and must succeed when `ok`.
    /// `check` is evaluated whenever a PVC, a PV, an Event or a Job of the cluster
    /// changes.
    pub async fn prewarm_until<F, Fut>(&self, what: &str, ok: bool, check: F) -> Run
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let client = self.client().await;
        let changes = futures::stream::select_all([
            watcher(
                Api::<PersistentVolumeClaim>::all(client.clone()),
                Default::default(),
            )
            .default_backoff()
            .touched_objects()
            .map(|_| ())
            .boxed(),
            watcher(
                Api::<PersistentVolume>::all(client.clone()),
                Default::default(),
            )
            .default_backoff()
            .touched_objects()
            .map(|_| ())
            .boxed(),
            watcher(Api::<Event>::all(client.clone()), Default::default())
                .default_backoff()
                .touched_objects()
                .map(|_| ())
                .boxed(),
            watcher(
                Api::<Job>::namespaced(client.clone(), self.ns()),
                Default::default(),
            )
            .default_backoff()
            .touched_objects()
            .map(|_| ())
            .boxed(),
        ]);
        futures::pin_mut!(changes);
        let jobs = Api::<Job>::namespaced(client.clone(), self.ns());
        let deadline = tokio::time::Instant::now() + 2 * WAIT;
        let mut runs: Vec<String> = Vec::new();
        loop {
            let current = runs.last().cloned();
            let finished = match &current {
                None => true,
                Some(name) => jobs
                    .get_opt(name)
                    .await
                    .ok()
                    .flatten()
                    .is_none_or(|j| job_has(&j, "Complete") || job_has(&j, "Failed")),
            };
            if check().await {
                let name = match current {
                    Some(n) => n,
                    // Held before any run (a test's precondition): one run all the same.
                    None => {
                        let n = self.c.cp.unique_name("stowage-prewarm");
                        self.start("stowage-prewarm", &n);
                        n
                    }
                };
                let job = finished_job(&client, self.ns(), &name).await;
                let run = Run {
                    log: self.job_log(&client, &name).await,
                    job,
                };
                if ok {
                    assert!(
                        run.ok(),
                        "{what}: prewarm Job {name} failed: {:?}\n{}",
                        run.job.status,
                        run.log
                    );
                }
                return run;
            }
            if finished {
                if let Some(name) = &current {
                    let log = self.job_log(&client, name).await;
                    let job = jobs.get(name).await.expect("prewarm Job");
                    if ok {
                        assert!(
                            job_has(&job, "Complete"),
                            "{what}: prewarm Job {name} failed: {:?}\n{log}",
                            job.status
                        );
                    }
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{what}: not after {} prewarm runs ({:?})\n{}",
                    runs.len(),
                    2 * WAIT,
                    self.logs(&[])
                );
                let name = self.c.cp.unique_name("stowage-prewarm");
                self.start("stowage-prewarm", &name);
                runs.push(name);
            }
            match tokio::time::timeout_at(deadline, changes.next()).await {
                Ok(Some(())) => {}
                Ok(None) => panic!("{what}: the watches ended"),
                Err(_) => panic!(
                    "{what}: not after {:?} ({} prewarm runs)\n{}",
                    2 * WAIT,
                    runs.len(),
                    self.logs(&[])
                ),
            }
        }
    }

    /// prewarm until every PVC of `pvcs` (namespace, name) is populated: Bound, its
    /// closing Event (Restored or BoundEmpty) published for its current UID, its
    /// prime PVC gone.
    pub async fn populate(&self, pvcs: &[(&str, &str)]) -> Run {
        let keys: Vec<(String, String)> = pvcs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let env = *self;
        self.prewarm_until("PVCs populated", true, move || {
            let keys = keys.clone();
            async move {
                for (ns, pvc) in &keys {
                    if !env.populated(ns, pvc).await {
                        return false;
                    }
                }
                true
            }
        })
        .await
    }

    /// [`Env::populate`]'s condition for one PVC.
    pub async fn populated(&self, ns: &str, pvc: &str) -> bool {
        let Some(claim) = self.pvc(ns, pvc).await else {
            return false;
        };
        if claim.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") {
            return false;
        }
        let uid = claim.metadata.uid.clone();
        let closed = self.events_of(ns, pvc).await.iter().any(|e| {
            matches!(
                e.reason.as_deref(),
                Some(pc::reason::RESTORED) | Some(pc::reason::BOUND_EMPTY)
            ) && e.regarding.as_ref().and_then(|r| r.uid.clone()) == uid
        });
        closed && self.primes_for(ns, pvc).await.is_empty()
    }

    pub async fn pvc(&self, ns: &str, pvc: &str) -> Option<PersistentVolumeClaim> {
        Api::<PersistentVolumeClaim>::namespaced(self.client().await, ns)
            .get_opt(pvc)
            .await
            .expect("get PVC")
    }

    pub async fn bound(&self, ns: &str, pvc: &str) -> bool {
        self.pvc(ns, pvc)
            .await
            .and_then(|p| p.status?.phase)
            .as_deref()
            == Some("Bound")
    }

    /// An annotation of PVC `ns/pvc`.
    pub async fn ann(&self, ns: &str, pvc: &str, key: &str) -> Option<String> {
        self.pvc(ns, pvc)
            .await?
            .metadata
            .annotations
            .unwrap_or_default()
            .get(key)
            .cloned()
    }

    /// Namespace `source` grants `to` the use of its repositories, as a user does:
    /// `kubectl annotate namespace <source> stowage.io/grant-repositories-to=<to>`.
    pub fn grant(&self, source: &str, to: &str) {
        let out = install::kubectl(
            self.c.cp,
            &[
                "annotate",
                "namespace",
                source,
                &format!("{}={to}", stowage_common::k8s::grant::GRANT_ANNOTATION),
            ],
            None,
        );
        assert!(
            out.status.success(),
            "grant {source} to {to}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Merges `annotations` into PVC `ns/pvc` (a user's `kubectl annotate`).
    pub async fn annotate_pvc(&self, ns: &str, pvc: &str, annotations: &[(&str, &str)]) {
        let m: serde_json::Map<String, serde_json::Value> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        Api::<PersistentVolumeClaim>::namespaced(self.client().await, ns)
            .patch(
                pvc,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": m}})),
            )
            .await
            .expect("annotate PVC");
    }

    /// Every Event regarding an object named `name` in `ns`.
    pub async fn events_of(&self, ns: &str, name: &str) -> Vec<Event> {
        Api::<Event>::namespaced(self.client().await, ns)
            .list(&ListParams::default())
            .await
            .expect("list events")
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .collect()
    }

    /// The notes of the Events of `reason` regarding `name` in `ns`.
    pub async fn events(&self, ns: &str, name: &str, reason: &str) -> Vec<String> {
        self.events_of(ns, name)
            .await
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .map(|e| e.note.unwrap_or_default())
            .collect()
    }

    /// The prime PVCs (stowage's namespace) populating `ns/pvc`.
    pub async fn primes_for(&self, ns: &str, pvc: &str) -> Vec<String> {
        let key = format!("{ns}/{pvc}");
        Api::<PersistentVolumeClaim>::namespaced(self.client().await, self.ns())
            .list(&ListParams::default())
            .await
            .expect("list prime PVCs")
            .items
            .into_iter()
            .filter(|p| {
                p.name_any().starts_with(pc::prime::NAME_PREFIX)
                    && p.annotations().get(pc::prime::FOR_PVC) == Some(&key)
            })
            .map(|p| p.name_any())
            .collect()
    }

    /// The host directory of the volume bound to PVC `ns/pvc`.
    pub async fn dir(&self, ns: &str, pvc: &str) -> PathBuf {
        let claim = self.pvc(ns, pvc).await.expect("PVC");
        let pv = claim
            .spec
            .and_then(|s| s.volume_name)
            .unwrap_or_else(|| panic!("PVC {ns}/{pvc} has no volume"));
        let pv = Api::<PersistentVolume>::all(self.client().await)
            .get(&pv)
            .await
            .expect("PV");
        PathBuf::from(pv.spec.and_then(|s| s.local).expect("a local PV").path)
    }

    /// Backup mover Jobs in `ns`.
    pub async fn backup_jobs(&self, ns: &str) -> Vec<Job> {
        Api::<Job>::namespaced(self.client().await, ns)
            .list(&ListParams::default().labels("stowage.io/operation=backup"))
            .await
            .expect("list jobs")
            .items
    }

    /// A backup of every opted-in PVC of `namespaces` through the scheduler (a run,
    /// its mover Jobs finished, a second run that records their results); returns the
    /// scheduler's logs.
    pub async fn backup(&self, namespaces: &[&str]) -> String {
        let first = self.run("stowage-scheduler").await;
        assert!(
            first.ok(),
            "scheduler failed: {:?}\n{}",
            first.job.status,
            first.log
        );
        let client = self.client().await;
        for ns in namespaces {
            for job in self.backup_jobs(ns).await {
                let done = finished_job(&client, ns, &job.name_any()).await;
                assert!(
                    job_has(&done, "Complete"),
                    "backup Job {ns}/{} failed: {:?}\nscheduler:\n{}\n{}",
                    job.name_any(),
                    done.status,
                    first.log,
                    self.logs(namespaces)
                );
            }
        }
        let second = self.run("stowage-scheduler").await;
        assert!(
            second.ok(),
            "scheduler failed: {:?}\n{}",
            second.job.status,
            second.log
        );
        format!("{}\n{}", first.log, second.log)
    }

    /// `s3:<endpoint>/<bucket>/<ns>/<pvc>`: the repository of a PVC.
    pub fn repository(&self, ns: &str, pvc: &str) -> String {
        format!(
            "s3:{}/{}/{ns}/{pvc}",
            self.installed.endpoint(),
            self.installed.bucket
        )
    }

    /// The snapshots of the repository of `ns/pvc` (`stowage-mover snapshots --json`).
    pub fn snapshots(&self, ns: &str, pvc: &str) -> Vec<serde_json::Value> {
        let repo = self.repository(ns, pvc);
        let out = std::process::Command::new(crate::bins::path("stowage-mover"))
            .args(["snapshots", "--json"])
            .env_clear()
            .envs(crate::garage::shared().env("x"))
            .envs(
                self.installed
                    .ca_bundle
                    .iter()
                    .map(|ca| ("STOWAGE_CA_BUNDLE", ca.as_os_str())),
            )
            .env("RESTIC_REPOSITORY", &repo)
            .env(
                "RESTIC_PASSWORD",
                stowage_common::k8s::credentials::derive_repository_password(
                    &self.installed.master,
                    &repo,
                ),
            )
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "snapshots of {repo}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The verdict prewarm's probe recorded for storage class `class`.
    pub async fn verdict(&self, class: &str) -> Option<String> {
        let cm = Api::<ConfigMap>::namespaced(self.client().await, self.ns())
            .get_opt(pc::probe::CONFIGMAP)
            .await
            .expect("get configmap")?;
        let v: serde_json::Value =
            serde_json::from_str(cm.data?.get(class)?).expect("verdict JSON");
        v["verdict"].as_str().map(str::to_string)
    }

    /// Probe PVCs (stowage's namespace) of `class` and the volumes provisioned for them.
    pub async fn probe_leftovers(&self, class: &str) -> Vec<String> {
        let client = self.client().await;
        let prefix = pc::probe::NAME_PREFIX;
        let pvcs = Api::<PersistentVolumeClaim>::namespaced(client.clone(), self.ns())
            .list(&ListParams::default())
            .await
            .expect("list PVCs")
            .items
            .into_iter()
            .filter(|p| {
                p.name_any().starts_with(prefix)
                    && p.spec
                        .as_ref()
                        .and_then(|s| s.storage_class_name.as_deref())
                        == Some(class)
            })
            .map(|p| format!("pvc/{}", p.name_any()));
        let pvs = Api::<PersistentVolume>::all(client)
            .list(&ListParams::default())
            .await
            .expect("list PVs")
            .items
            .into_iter()
            .filter(|pv| {
                let spec = pv.spec.as_ref();
                spec.and_then(|s| s.storage_class_name.as_deref()) == Some(class)
                    && spec
                        .and_then(|s| s.claim_ref.as_ref())
                        .and_then(|c| c.name.as_deref())
                        .is_some_and(|n| n.starts_with(prefix))
            })
            .map(|pv| format!("pv/{}", pv.name_any()));
        pvcs.chain(pvs).collect()
    }
}

/// Content with the metadata a restore must bring back (as in
/// `tests/tests/prewarm_e2e.rs`): nested directories, a random blob, a file of mode
/// 0600, a symlink.
pub fn fill(dir: &std::path::Path, seed: u64) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    std::fs::write(dir.join("hello.txt"), format!("hello {seed}\n")).unwrap();
    crate::trees::write_random(&dir.join("sub/blob.bin"), 300_000, seed);
    std::fs::write(dir.join("sub/deeper/secret.conf"), "k=v\n").unwrap();
    std::fs::set_permissions(
        dir.join("sub/deeper/secret.conf"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let _ = std::os::unix::fs::symlink("sub/blob.bin", dir.join("link"));
}

/// What the real controllers did, in the order the API server stored it: the
/// resourceVersion (etcd's revision, one sequence for every object) of the first
/// write that showed each PVC `Bound` and each app pod bound to a node or Running.
#[derive(Clone, Default)]
pub struct Order {
    seen: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl Order {
    /// Watches the PVCs and pods of `namespaces` from now on (the watches end with
    /// the test's runtime).
    pub async fn record(env: &Env, namespaces: &[&str]) -> Order {
        let order = Order::default();
        let client = env.client().await;
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(8);
        for ns in namespaces {
            let (o, ready) = (order.clone(), ready_tx.clone());
            let pvcs = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns);
            tokio::spawn(async move {
                let mut s = watcher(pvcs, Default::default()).boxed();
                while let Some(ev) = s.next().await {
                    match ev {
                        Ok(watcher::Event::InitDone) => {
                            let _ = ready.send(()).await;
                        }
                        Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p))
                            if p.status.as_ref().and_then(|s| s.phase.as_deref())
                                == Some("Bound") =>
                        {
                            o.saw(&format!("pvc {}", p.name_any()), &p);
                        }
                        _ => {}
                    }
                }
            });
            let (o, ready) = (order.clone(), ready_tx.clone());
            let pods = Api::<Pod>::namespaced(client.clone(), ns);
            tokio::spawn(async move {
                let mut s = watcher(pods, Default::default()).boxed();
                while let Some(ev) = s.next().await {
                    match ev {
                        Ok(watcher::Event::InitDone) => {
                            let _ = ready.send(()).await;
                        }
                        Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                            let on_node = p.spec.as_ref().and_then(|s| s.node_name.as_ref());
                            let running = p.status.as_ref().and_then(|s| s.phase.as_deref())
                                == Some("Running");
                            if on_node.is_some() || running {
                                o.saw(&format!("pod {}", p.name_any()), &p);
                            }
                        }
                        _ => {}
                    }
                }
            });
        }
        drop(ready_tx);
        for _ in 0..2 * namespaces.len() {
            tokio::time::timeout(WAIT, ready_rx.recv())
                .await
                .expect("the watches of the recorder started");
        }
        order
    }

    fn saw<K: ::kube::Resource>(&self, key: &str, obj: &K) {
        let ns = obj.meta().namespace.clone().unwrap_or_default();
        let rv = obj
            .meta()
            .resource_version
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(u64::MAX);
        self.seen
            .lock()
            .unwrap()
            .entry(format!("{ns} {key}"))
            .or_insert(rv);
    }

    /// The revision at which PVC `ns/pvc` was first seen Bound.
    pub fn bound(&self, ns: &str, pvc: &str) -> Option<u64> {
        self.seen
            .lock()
            .unwrap()
            .get(&format!("{ns} pvc {pvc}"))
            .copied()
    }

    /// The revision at which pod `ns/pod` was first seen on a node (or Running).
    pub fn started(&self, ns: &str, pod: &str) -> Option<u64> {
        self.seen
            .lock()
            .unwrap()
            .get(&format!("{ns} pod {pod}"))
            .copied()
    }
}

/// Waits until every pod of `pods` (namespace, name) is Running.
pub async fn running(env: &Env, pods: &[(&str, String)]) {
    let client = env.client().await;
    for (ns, pod) in pods {
        let api = Api::<Pod>::namespaced(client.clone(), ns);
        let cond = ::kube::runtime::wait::await_condition(api, pod, |p: Option<&Pod>| {
            p.and_then(|p| p.status.as_ref()?.phase.as_deref()) == Some("Running")
        });
        tokio::time::timeout(WAIT, cond)
            .await
            .unwrap_or_else(|_| panic!("pod {ns}/{pod} not Running after {WAIT:?}"))
            .expect("watch pods");
    }
}

/// The naive class on the shared cluster: provisioned in the manner of rancher
/// local-path ([`storage::LOCAL_PATH`]: claims with a foreign `dataSourceRef` too),
/// WaitForFirstConsumer, reclaim policy `Retain` (a released volume is left for its
/// owner to delete); its provisioner starts on first use.
pub fn naive_class() -> &'static str {
    static STARTED: std::sync::OnceLock<storage::Provisioner> = std::sync::OnceLock::new();
    STARTED.get_or_init(|| {
        storage::Provisioner::start_as(
            super::shared(),
            storage::LOCAL_PATH,
            NODES[0],
            vec![storage::class_of(
                storage::LOCAL_PATH,
                NAIVE_CLASS,
                false,
                false,
                "Retain",
            )],
        )
    });
    NAIVE_CLASS
}

/// The name of [`naive_class`].
pub const NAIVE_CLASS: &str = "naive-local-path";
