//! The cluster simulator: volume provisioning and binding (Immediate, WaitForFirstConsumer,
//! node-local affinity, the populator rebind, naive provisioners), scheduling, Jobs run
//! as local processes (`/bin/sh` stands for an image), namespace deletion and wipe.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim, Pod, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};
use stowage_testkit::sim::{
    BindingMode, Cluster, ClusterOptions, NodeSpec, PvcSpec, StorageClassSpec,
};

const T: Duration = Duration::from_secs(20);

fn options() -> ClusterOptions {
    ClusterOptions::new()
        .node(NodeSpec::new("node-1"))
        .node(NodeSpec::new("node-2").label("zone", "b"))
        .storage_class(StorageClassSpec::local_csi("local").default_class())
        .storage_class(StorageClassSpec::local_path("local-path"))
        .storage_class(StorageClassSpec::network("network"))
        .storage_class(StorageClassSpec::local_csi("local-now").binding(BindingMode::Immediate))
        .namespace("apps")
        .namespace("stowage")
        .binary("busybox-sh", "/bin/sh")
}

fn phase(p: &PersistentVolumeClaim) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn pod_phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn pv_node(pv: &PersistentVolume) -> Option<String> {
    let v = serde_json::to_value(pv).unwrap();
    v.pointer("/spec/nodeAffinity/required/nodeSelectorTerms/0/matchExpressions/0/values/0")
        .and_then(Value::as_str)
        .map(str::to_string)
}

async fn bound_pv(c: &Cluster, ns: &str, name: &str) -> PersistentVolume {
    let pv_name = c
        .wait_for(T, |s| {
            let p = s.get::<PersistentVolumeClaim>(ns, name)?;
            (phase(&p) == "Bound").then(|| p.spec?.volume_name)?
        })
        .await
        .unwrap_or_else(|e| panic!("{ns}/{name} not bound: {e}\n{:#}", c.api().snapshot_json()));
    c.store().get::<PersistentVolume>("", &pv_name).unwrap()
}

fn job(name: &str, script: &str, backoff: i32, env: Value) -> Job {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": backoff,
            "template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{
                    "name": "main",
                    "image": "docker.io/library/busybox-sh:1.36",
                    "command": ["sh", "-c", script],
                    "env": env,
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                }],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
            }},
        },
    }))
    .unwrap()
}

fn job_condition(j: &Job) -> Option<(String, String)> {
    j.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| (c.type_.clone(), c.reason.clone().unwrap_or_default()))
}

async fn finished(c: &Cluster, ns: &str, name: &str) -> (Job, String, String) {
    c.wait_for(T, |s| {
        let j = s.get::<Job>(ns, name)?;
        let (t, r) = job_condition(&j)?;
        Some((j, t, r))
    })
    .await
    .unwrap_or_else(|e| panic!("job {ns}/{name} did not finish: {e}\n{}", c.all_pod_logs()))
}

fn job_pods(c: &Cluster, ns: &str, job: &str) -> Vec<Pod> {
    c.store()
        .list_labeled::<Pod>(Some(ns), &format!("job-name={job}"))
}

#[tokio::test]
async fn immediate_and_wffc_binding_with_node_affinity() {
    let c = Cluster::start(options());
    assert_eq!(
        c.store()
            .list::<k8s_openapi::api::core::v1::Node>(None)
            .len(),
        2
    );
    let ns = c.store().get::<Namespace>("", "apps").unwrap();
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Active"));

    // Immediate, network: bound at once, no node affinity.
    c.create_pvc("apps", &PvcSpec::new("shared").class("network").size("2Gi"))
        .unwrap();
    let pv = bound_pv(&c, "apps", "shared").await;
    assert_eq!(pv_node(&pv), None);
    let spec = pv.spec.as_ref().unwrap();
    assert_eq!(spec.capacity.as_ref().unwrap()["storage"].0, "2Gi");
    assert_eq!(
        spec.persistent_volume_reclaim_policy.as_deref(),
        Some("Delete")
    );
    let claim = spec.claim_ref.as_ref().unwrap();
    assert_eq!(
        (claim.namespace.as_deref(), claim.name.as_deref()),
        (Some("apps"), Some("shared"))
    );
    assert!(c.volume_dir("apps", "shared").unwrap().is_dir());
    let pvc = c
        .store()
        .get::<PersistentVolumeClaim>("apps", "shared")
        .unwrap();
    assert_eq!(pvc.annotations()["pv.kubernetes.io/bind-completed"], "yes");
    assert!(
        pvc.metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"kubernetes.io/pvc-protection".to_string())
    );

    // Immediate, node-local: pinned to a node.
    c.create_pvc("apps", &PvcSpec::new("pinned").class("local-now"))
        .unwrap();
    assert_eq!(
        pv_node(&bound_pv(&c, "apps", "pinned").await).as_deref(),
        Some("node-1")
    );

    // WaitForFirstConsumer (the default class): Pending until a pod is scheduled.
    c.create_pvc("apps", &PvcSpec::new("db")).unwrap();
    c.wait_for(T, |s| {
        let p = s.get::<PersistentVolumeClaim>("apps", "db")?;
        (p.spec?.storage_class_name.as_deref() == Some("local")).then_some(())
    })
    .await
    .unwrap();
    c.create_app_pod("apps", "db", "db", Some("node-2"), Some((1000, 1000)), &[])
        .unwrap();
    let pv = bound_pv(&c, "apps", "db").await;
    assert_eq!(pv_node(&pv).as_deref(), Some("node-2"));
    let pvc = c
        .store()
        .get::<PersistentVolumeClaim>("apps", "db")
        .unwrap();
    assert_eq!(
        pvc.annotations()["volume.kubernetes.io/selected-node"],
        "node-2"
    );
    let pod = c
        .wait_for(T, |s| {
            s.get::<Pod>("apps", "db")
                .filter(|p| pod_phase(p) == "Running")
        })
        .await
        .unwrap();
    assert_eq!(pod.spec.unwrap().node_name.as_deref(), Some("node-2"));

    // A pod that wants another node than its volume: Pending, with the reason.
    c.create_app_pod("apps", "misplaced", "db", Some("node-1"), None, &[])
        .unwrap();
    let message = c
        .wait_for(T, |s| {
            let p = s.get::<Pod>("apps", "misplaced")?;
            let cond = p
                .status?
                .conditions?
                .into_iter()
                .find(|c| c.type_ == "PodScheduled")?;
            (cond.status == "False").then(|| {
                (
                    cond.reason.unwrap_or_default(),
                    cond.message.unwrap_or_default(),
                )
            })
        })
        .await
        .unwrap();
    assert_eq!(message.0, "Unschedulable");
    assert!(
        message
            .1
            .contains("1 node(s) had volume node affinity conflict"),
        "{}",
        message.1
    );
    assert!(
        message
            .1
            .contains("1 node(s) didn't match Pod's node affinity/selector"),
        "{}",
        message.1
    );
    assert_eq!(
        pod_phase(&c.store().get::<Pod>("apps", "misplaced").unwrap()),
        "Pending"
    );

    // Taints keep pods away unless tolerated.
    let tainted = Cluster::start(
        ClusterOptions::new()
            .node(NodeSpec::new("only").taint("dedicated", "db", "NoSchedule"))
            .storage_class(StorageClassSpec::network("network"))
            .namespace("apps"),
    );
    tainted
        .create_pvc("apps", &PvcSpec::new("v").class("network"))
        .unwrap();
    tainted
        .create_app_pod("apps", "no", "v", None, None, &[])
        .unwrap();
    let toleration = serde_json::from_value(
        json!({"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}),
    )
    .unwrap();
    tainted
        .create_app_pod("apps", "yes", "v", None, None, &[toleration])
        .unwrap();
    tainted
        .wait_for(T, |s| {
            s.get::<Pod>("apps", "yes")
                .filter(|p| pod_phase(p) == "Running")
        })
        .await
        .unwrap();
    let no = tainted.store().get::<Pod>("apps", "no").unwrap();
    let cond = no
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "PodScheduled")
        .unwrap();
    assert!(
        cond.message
            .unwrap()
            .contains("untolerated taint {dedicated: db}")
    );
}

use kube::ResourceExt;

#[tokio::test]
async fn job_runs_a_process_with_env_volume_and_termination_message() {
    let c = Cluster::start(options());
    c.create_pvc("apps", &PvcSpec::new("data")).unwrap();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "creds", "namespace": "apps"},
        "stringData": {"greeting": "hello from a secret"},
    }))
    .unwrap();
    c.store().create(&secret).unwrap();
    // The Job goes through the API, as the scheduler would create it.
    let client = c
        .api()
        .client_for("system:serviceaccount:stowage:stowage-scheduler");
    let jobs: Api<Job> = Api::namespaced(client, "apps");
    let env = json!([
        {"name": "GREETING", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "greeting"}}},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "OUT", "value": "/data/out"},
    ]);
    let script = r#"touch /data/seen; ls /data > /data/out; echo "$GREETING" >> $OUT; echo "$POD" >> /data/out; printf '{"ok":true}' > /dev/termination-log"#;
    jobs.create(&PostParams::default(), &job("backup", script, 2, env))
        .await
        .unwrap();

    let (j, t, _) = finished(&c, "apps", "backup").await;
    assert_eq!(t, "Complete", "{}", c.all_pod_logs());
    let st = j.status.unwrap();
    assert_eq!(
        (st.succeeded, st.failed.unwrap_or(0), st.active.unwrap_or(0)),
        (Some(1), 0, 0)
    );
    assert!(st.start_time.is_some() && st.completion_time.is_some());

    let pods = job_pods(&c, "apps", "backup");
    assert_eq!(pods.len(), 1);
    let pod = &pods[0];
    assert!(pod.name_any().starts_with("backup-") && pod.name_any().len() == "backup-".len() + 5);
    assert_eq!(
        pod.labels()["batch.kubernetes.io/controller-uid"],
        j.metadata.uid.clone().unwrap()
    );
    assert_eq!(pod_phase(pod), "Succeeded");
    let cs = &pod
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0];
    let term = cs.state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!(
        (term.exit_code, term.reason.as_deref()),
        (0, Some("Completed"))
    );
    assert_eq!(term.message.as_deref(), Some(r#"{"ok":true}"#));

    let dir = c.volume_dir("apps", "data").unwrap();
    let out = std::fs::read_to_string(dir.join("out")).unwrap();
    // `ls` ran after the shell had created `out`.
    assert_eq!(
        out,
        format!("out\nseen\nhello from a secret\n{}\n", pod.name_any())
    );
}

/// The demo's repositories lived under `/tmp` (any checkout made with `mktemp -d`): the
/// kubelet took the Secret's host path for the pod's own `/tmp` mount, so the restore
/// mover saw no repository. Data from Secrets (and `$(VAR)` expansions of it) reaches
/// the process unchanged; only the pod spec's own paths are mapped.
#[tokio::test]
async fn host_paths_from_secrets_are_never_taken_for_pod_paths() {
    let c = Cluster::start(options());
    c.create_pvc("apps", &PvcSpec::new("data")).unwrap();
    let host = tempfile::Builder::new()
        .prefix("stowage-sim-host-")
        .tempdir_in("/tmp")
        .unwrap();
    let repo = host.path().join("backups/apps/data");
    let repo = repo.to_str().unwrap();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "run", "namespace": "apps"},
        "stringData": {"RESTIC_REPOSITORY": repo},
    }))
    .unwrap();
    c.store().create(&secret).unwrap();
    let mut j = job(
        "restore",
        r#"printf '%s\n' "$RESTIC_REPOSITORY" "$COPY" "$TMPDIR" > /data/out"#,
        0,
        json!([
            {"name": "COPY", "value": "$(RESTIC_REPOSITORY)"},
            {"name": "TMPDIR", "value": "/tmp"},
        ]),
    );
    let spec = j.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
    let container = &mut spec.containers[0];
    container.env_from = Some(vec![
        serde_json::from_value(json!({"secretRef": {"name": "run"}})).unwrap(),
    ]);
    container
        .volume_mounts
        .as_mut()
        .unwrap()
        .push(serde_json::from_value(json!({"name": "tmp", "mountPath": "/tmp"})).unwrap());
    spec.volumes
        .as_mut()
        .unwrap()
        .push(serde_json::from_value(json!({"name": "tmp", "emptyDir": {}})).unwrap());
    j.metadata.namespace = Some("apps".into());
    c.store().create(&j).unwrap();
    let (_, t, _) = finished(&c, "apps", "restore").await;
    assert_eq!(t, "Complete", "{}", c.all_pod_logs());
    let out = std::fs::read_to_string(c.volume_dir("apps", "data").unwrap().join("out")).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0], repo,
        "the Secret's host path reaches the process as it is"
    );
    assert_eq!(lines[1], repo, "and so does its $(VAR) expansion");
    // The pod's own /tmp is its emptyDir, inside the simulator's root.
    assert!(lines[2].starts_with(c.root().to_str().unwrap()), "{out}");
    assert!(std::path::Path::new(lines[2]).is_dir(), "{out}");
}

#[tokio::test]
async fn failing_job_retries_up_to_backoff_limit() {
    let c = Cluster::start(options());
    c.create_pvc("apps", &PvcSpec::new("data").class("network"))
        .unwrap();
    let script =
        "echo attempt >> /data/attempts; echo 'cannot reach S3' > /dev/termination-log; exit 3";
    c.store()
        .create(&{
            let mut j = job("fails", script, 2, json!([]));
            j.metadata.namespace = Some("apps".into());
            j
        })
        .unwrap();
    let (j, t, reason) = finished(&c, "apps", "fails").await;
    assert_eq!(
        (t.as_str(), reason.as_str()),
        ("Failed", "BackoffLimitExceeded")
    );
    assert_eq!(j.status.unwrap().failed, Some(3));
    let pods = job_pods(&c, "apps", "fails");
    assert_eq!(pods.len(), 3);
    for p in &pods {
        let term = p
            .status
            .as_ref()
            .unwrap()
            .container_statuses
            .as_ref()
            .unwrap()[0]
            .state
            .clone()
            .unwrap()
            .terminated
            .unwrap();
        assert_eq!(
            (
                term.exit_code,
                term.reason.as_deref(),
                term.message.as_deref()
            ),
            (3, Some("Error"), Some("cannot reach S3\n"))
        );
    }
    let attempts =
        std::fs::read_to_string(c.volume_dir("apps", "data").unwrap().join("attempts")).unwrap();
    assert_eq!(attempts.lines().count(), 3);
}

#[tokio::test]
async fn missing_secret_is_a_create_container_config_error() {
    let c = Cluster::start(options());
    c.create_pvc("apps", &PvcSpec::new("data").class("network"))
        .unwrap();
    let env = json!([{"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "stowage-s3", "key": "access-key"}}},
                     {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k", "optional": true}}}]);
    let mut j = job("mover", "echo \"$KEY\" > /data/key", 1, env);
    j.metadata.namespace = Some("apps".into());
    c.store().create(&j).unwrap();
    let waiting = c
        .wait_for(T, |s| {
            let p = job_pods(&c, "apps", "mover").into_iter().next()?;
            let w = p
                .status?
                .container_statuses?
                .first()?
                .state
                .clone()?
                .waiting?;
            Some((
                w.reason.unwrap_or_default(),
                w.message.unwrap_or_default(),
                s.resource_version(),
            ))
        })
        .await
        .unwrap();
    assert_eq!(
        (waiting.0.as_str(), waiting.1.as_str()),
        (
            "CreateContainerConfigError",
            "secret \"stowage-s3\" not found"
        )
    );
    // A Secret without the key: still an error, with the kubelet's message.
    let secret: Secret = serde_json::from_value(json!({"metadata": {"name": "stowage-s3", "namespace": "apps"}, "stringData": {"other": "x"}})).unwrap();
    c.store().create(&secret).unwrap();
    c.wait_for(T, |_| {
        let p = job_pods(&c, "apps", "mover").into_iter().next()?;
        let w = p
            .status?
            .container_statuses?
            .first()?
            .state
            .clone()?
            .waiting?;
        (w.message.as_deref() == Some("couldn't find key access-key in Secret apps/stowage-s3"))
            .then_some(())
    })
    .await
    .unwrap();
    // Once the key exists, the kubelet starts the container.
    c.store()
        .patch::<Secret>(
            "apps",
            "stowage-s3",
            &json!({"stringData": {"access-key": "AKIA"}}),
        )
        .unwrap();
    let (_, t, _) = finished(&c, "apps", "mover").await;
    assert_eq!(t, "Complete");
    assert_eq!(
        std::fs::read_to_string(c.volume_dir("apps", "data").unwrap().join("key")).unwrap(),
        "AKIA\n"
    );
}

#[tokio::test]
async fn kill_deadline_and_job_deletion_stop_processes() {
    let c = Cluster::start(options());
    c.create_pvc("apps", &PvcSpec::new("data").class("network"))
        .unwrap();
    let make = |name: &str, backoff: i32| {
        let mut j = job(
            name,
            "echo started > /data/$(POD); exec sleep 60",
            backoff,
            json!([{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]),
        );
        j.metadata.namespace = Some("apps".into());
        j
    };
    let running = |job: &'static str| {
        let c = &c;
        async move {
            c.wait_for(T, |_| {
                job_pods(c, "apps", job)
                    .into_iter()
                    .find(|p| pod_phase(p) == "Running")
                    .map(|p| p.name_any())
            })
            .await
            .unwrap()
        }
    };

    // Killed by the test knob: exit 137, and with backoffLimit 0 the Job fails.
    c.store().create(&make("killed", 0)).unwrap();
    let pod = running("killed").await;
    assert!(c.kill_pod("apps", &pod));
    let (_, t, reason) = finished(&c, "apps", "killed").await;
    assert_eq!(
        (t.as_str(), reason.as_str()),
        ("Failed", "BackoffLimitExceeded")
    );
    let p = c.store().get::<Pod>("apps", &pod).unwrap();
    let term = p.status.unwrap().container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!(
        (term.exit_code, term.reason.as_deref()),
        (137, Some("Error"))
    );

    // activeDeadlineSeconds: the pod is killed (deleted), the Job fails.
    let mut j = make("slow", 3);
    j.spec.as_mut().unwrap().active_deadline_seconds = Some(1);
    c.store().create(&j).unwrap();
    let (_, t, reason) = finished(&c, "apps", "slow").await;
    assert_eq!(
        (t.as_str(), reason.as_str()),
        ("Failed", "DeadlineExceeded")
    );
    c.wait_for(T, |_| job_pods(&c, "apps", "slow").is_empty().then_some(()))
        .await
        .unwrap();

    // Deleting the Job (Background) deletes its pod, which kills the process.
    c.store().create(&make("deleted", 3)).unwrap();
    let pod = running("deleted").await;
    let proc_dir = process_dir(&c.store().get::<Pod>("apps", &pod).unwrap());
    assert!(proc_dir.exists());
    let jobs: Api<Job> = Api::namespaced(c.api().client_for("tester"), "apps");
    jobs.delete("deleted", &DeleteParams::background())
        .await
        .unwrap();
    assert!(c.store().get::<Pod>("apps", &pod).is_none());
    c.wait_for(T, |_| (!proc_dir.exists()).then_some(()))
        .await
        .unwrap();
}

/// `/proc/<pid>` of a running pod's process (the simulator's containerID is `sim://<pid>`).
fn process_dir(p: &Pod) -> std::path::PathBuf {
    let id = p
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0]
        .container_id
        .clone()
        .unwrap();
    std::path::PathBuf::from(format!("/proc/{}", id.strip_prefix("sim://").unwrap()))
}

#[tokio::test]
async fn populator_rebind_hands_the_volume_over() {
    let c = Cluster::start(options());
    // The user's PVC asks for a restore: the CSI-like class leaves it Pending.
    let user = c
        .create_pvc(
            "apps",
            &PvcSpec::new("data").data_source_ref("stowage.io", "Restore", "data"),
        )
        .unwrap();
    c.wait_for(T, |s| {
        let p = s.get::<PersistentVolumeClaim>("apps", "data")?;
        p.annotations()
            .contains_key("volume.kubernetes.io/storage-provisioner")
            .then_some(())
    })
    .await
    .unwrap();
    // The populator's prime PVC, on the node it picked, gets a volume.
    c.create_pvc(
        "stowage",
        &PvcSpec::new("prime-data").annotation("volume.kubernetes.io/selected-node", "node-2"),
    )
    .unwrap();
    let pv = bound_pv(&c, "stowage", "prime-data").await;
    assert_eq!(pv_node(&pv).as_deref(), Some("node-2"));
    std::fs::write(
        c.volume_dir("stowage", "prime-data")
            .unwrap()
            .join("restored.txt"),
        "data",
    )
    .unwrap();
    let user_pvc = c
        .store()
        .get::<PersistentVolumeClaim>("apps", "data")
        .unwrap();
    assert_eq!(phase(&user_pvc), "Pending");
    assert!(user_pvc.spec.unwrap().volume_name.is_none());

    // Rebind: PV claimRef → user PVC, then the prime PVC goes.
    let claim_ref = json!({"spec": {"claimRef": {"namespace": "apps", "name": "data", "uid": user.metadata.uid,
        "kind": "PersistentVolumeClaim", "apiVersion": "v1", "resourceVersion": null}}});
    c.store()
        .patch::<PersistentVolume>("", &pv.name_any(), &claim_ref)
        .unwrap();
    c.store()
        .delete::<PersistentVolumeClaim>("stowage", "prime-data")
        .unwrap();

    let rebound = bound_pv(&c, "apps", "data").await;
    assert_eq!(rebound.name_any(), pv.name_any());
    assert_eq!(
        std::fs::read_to_string(c.volume_dir("apps", "data").unwrap().join("restored.txt"))
            .unwrap(),
        "data"
    );
    c.wait_for(T, |s| {
        s.get::<PersistentVolumeClaim>("stowage", "prime-data")
            .is_none()
            .then_some(())
    })
    .await
    .unwrap();
    let pv_now = c
        .store()
        .get::<PersistentVolume>("", &pv.name_any())
        .unwrap();
    assert_eq!(pv_now.status.unwrap().phase.as_deref(), Some("Bound"));
    // The app lands where the data is.
    c.create_app_pod("apps", "app", "data", None, None, &[])
        .unwrap();
    let pod = c
        .wait_for(T, |s| {
            s.get::<Pod>("apps", "app")
                .filter(|p| pod_phase(p) == "Running")
        })
        .await
        .unwrap();
    assert_eq!(pod.spec.unwrap().node_name.as_deref(), Some("node-2"));
}

#[tokio::test]
async fn naive_provisioner_binds_a_populated_pvc_at_once() {
    let c = Cluster::start(options());
    c.create_pvc(
        "apps",
        &PvcSpec::new("data")
            .class("local-path")
            .data_source_ref("stowage.io", "Restore", "data"),
    )
    .unwrap();
    c.create_app_pod("apps", "app", "data", None, None, &[])
        .unwrap();
    let pv = bound_pv(&c, "apps", "data").await;
    assert_eq!(
        pv.annotations()["pv.kubernetes.io/provisioned-by"],
        "rancher.io/local-path"
    );
    assert_eq!(
        std::fs::read_dir(c.volume_dir("apps", "data").unwrap())
            .unwrap()
            .count(),
        0,
        "empty volume"
    );
}

#[tokio::test]
async fn namespace_deletion_and_retain() {
    let c = Cluster::start(
        options().storage_class(StorageClassSpec::network("keep").reclaim("Retain")),
    );
    c.create_namespace("team", &[("stowage.io/root", "true")])
        .unwrap();
    c.create_pvc("team", &PvcSpec::new("data").class("network"))
        .unwrap();
    c.create_pvc("team", &PvcSpec::new("kept").class("keep"))
        .unwrap();
    let deleted_pv = bound_pv(&c, "team", "data").await;
    let kept_pv = bound_pv(&c, "team", "kept").await;
    let dir = c.volume_dir("team", "data").unwrap();
    c.create_app_pod("team", "app", "data", None, None, &[])
        .unwrap();
    c.wait_for(T, |s| {
        s.get::<Pod>("team", "app")
            .filter(|p| pod_phase(p) == "Running")
    })
    .await
    .unwrap();

    // A PVC in use stays Terminating.
    c.store()
        .delete::<PersistentVolumeClaim>("team", "data")
        .unwrap();
    let p = c
        .store()
        .get::<PersistentVolumeClaim>("team", "data")
        .unwrap();
    assert!(p.metadata.deletion_timestamp.is_some());

    c.api().hold_namespace_deletion("team");
    let namespaces: Api<Namespace> = Api::all(c.api().client_for("tester"));
    namespaces
        .delete("team", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(
        namespaces
            .get("team")
            .await
            .unwrap()
            .status
            .unwrap()
            .phase
            .as_deref(),
        Some("Terminating")
    );
    c.api().release_namespace_deletion("team");

    c.wait_for(T, |s| {
        s.get::<Namespace>("", "team").is_none().then_some(())
    })
    .await
    .unwrap();
    c.wait_for(T, |s| {
        s.get::<PersistentVolume>("", &deleted_pv.name_any())
            .is_none()
            .then_some(())
    })
    .await
    .unwrap();
    assert!(!dir.exists(), "reclaim Delete removes the directory");
    let kept = c
        .wait_for(T, |s| {
            s.get::<PersistentVolume>("", &kept_pv.name_any())
                .filter(|pv| {
                    pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released")
                })
        })
        .await
        .unwrap();
    assert!(kept.spec.unwrap().host_path.is_some());
}

#[tokio::test]
async fn wipe_rebuilds_the_cluster() {
    let c = Cluster::start(options());
    c.create_pvc("apps", &PvcSpec::new("data").class("network"))
        .unwrap();
    bound_pv(&c, "apps", "data").await;
    let dir = c.volume_dir("apps", "data").unwrap();
    std::fs::write(dir.join("f"), "x").unwrap();
    let mut j = job("long", "exec sleep 60", 0, json!([]));
    j.metadata.namespace = Some("apps".into());
    c.store().create(&j).unwrap();
    let pod = c
        .wait_for(T, |_| {
            job_pods(&c, "apps", "long")
                .into_iter()
                .find(|p| pod_phase(p) == "Running")
                .map(|p| p.name_any())
        })
        .await
        .unwrap();

    let proc_dir = process_dir(&c.store().get::<Pod>("apps", &pod).unwrap());
    assert!(proc_dir.exists());
    c.wipe(true).await;
    assert!(!proc_dir.exists(), "processes are killed and reaped");
    assert!(
        c.store()
            .get::<PersistentVolumeClaim>("apps", "data")
            .is_none()
    );
    assert!(
        c.store().get::<Namespace>("", "apps").is_some(),
        "namespaces re-created"
    );
    assert_eq!(
        c.store()
            .list::<k8s_openapi::api::core::v1::Node>(None)
            .len(),
        2
    );
    assert!(dir.join("f").exists(), "volumes kept on request");

    // The rebuilt cluster works.
    c.create_pvc("apps", &PvcSpec::new("data").class("network"))
        .unwrap();
    bound_pv(&c, "apps", "data").await;
    c.wipe(false).await;
    assert!(!dir.exists());
}

#[tokio::test]
async fn run_program_uses_a_kubeconfig_for_the_user() {
    let c = Cluster::start(options());
    let out = c
        .run_program(
            std::path::Path::new("/bin/sh"),
            &["-c", "grep token: \"$KUBECONFIG\"; echo \"$EXTRA\"; echo \"${AWS_SECRET_ACCESS_KEY:-unset}\""],
            &[("EXTRA", "x")],
            "system:serviceaccount:stowage:stowage-scheduler",
        )
        .await;
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "    token: \"system:serviceaccount:stowage:stowage-scheduler\"\nx\nunset\n"
    );
}

#[tokio::test]
async fn kubelet_env_from_projected_volumes_and_logs() {
    let c = Cluster::start(options());
    c.create_pvc("apps", &PvcSpec::new("data").class("network"))
        .unwrap();
    let cm: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "settings", "namespace": "apps"},
        "data": {"mode": "fast", "level": "3"},
    }))
    .unwrap();
    c.store().create(&cm).unwrap();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "creds", "namespace": "apps"},
        "stringData": {"password": "hunter2", "unused": "x"},
    }))
    .unwrap();
    c.store().create(&secret).unwrap();
    let script = r#"set -e
echo "$CFG_mode $CFG_level $LEVEL" > /data/out
cat /etc/creds/pw.txt >> /data/out
stat -c %a /etc/creds/pw.txt >> /data/out
test ! -e /etc/creds/unused
echo scratch > /scratch/x; cat /scratch/x >> /data/out
echo "log to stdout"; echo "log to stderr" >&2
echo "$HOME" | grep -q "^/" "#;
    let j: Job = serde_json::from_value(json!({
        "metadata": {"name": "probe", "namespace": "apps"},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "main", "image": "busybox-sh", "command": ["/bin/sh", "-c", script],
                "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
                "env": [{"name": "LEVEL", "value": "level=$(CFG_level)"}],
                "volumeMounts": [
                    {"name": "data", "mountPath": "/data"},
                    {"name": "creds", "mountPath": "/etc/creds", "readOnly": true},
                    {"name": "scratch", "mountPath": "/scratch"},
                ],
            }],
            "volumes": [
                {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
                {"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o400,
                                             "items": [{"key": "password", "path": "pw.txt"}]}},
                {"name": "scratch", "emptyDir": {}},
            ],
        }}},
    }))
    .unwrap();
    c.store().create(&j).unwrap();
    let (_, t, _) = finished(&c, "apps", "probe").await;
    let pod = job_pods(&c, "apps", "probe").remove(0);
    let logs = c.pod_logs("apps", &pod.name_any());
    assert_eq!(t, "Complete", "{logs}");
    assert_eq!(
        logs,
        "--- stdout\nlog to stdout\n--- stderr\nlog to stderr\n"
    );
    let out = std::fs::read_to_string(c.volume_dir("apps", "data").unwrap().join("out")).unwrap();
    assert_eq!(out, "fast 3 level=3\nhunter2400\nscratch\n");
}
