//! Consistent backups end to end in the cluster simulator: the real scheduler runs
//! Velero-style hooks in app pods through `pods/exec` (the simulator runs them as local
//! processes), makes VolumeSnapshots and clones (the simulator plays the CSI snapshot
//! controller and provisioner), the real mover backs up the point-in-time copy into
//! Garage, and the temporary objects go away again, also after a killed pass.

use std::collections::BTreeMap;
use std::path::PathBuf;
use stowage_testkit::obj;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use serde_json::{Value, json};
use stowage_common::k8s::contract::{consistency as cons, status};
use stowage_testkit::bins;
use stowage_testkit::fakeapi::Gvr;
use stowage_testkit::sim::exec::records;
use stowage_testkit::sim::{NodeSpec, PvcSpec, StorageClassSpec};
use stowage_testkit::world::{Keys, POLICIES, SCHEDULER, WAIT, World};

const MASTER: &str = "consistency master password";
/// The scheduler's copy settings here: a short copy timeout, orphans removed at once.
const COPY_TIMEOUT: (&str, &str) = ("STOWAGE_COPY_TIMEOUT_SECS", "3");
const ORPHAN_GRACE: (&str, &str) = ("STOWAGE_ORPHAN_GRACE_SECS", "0");

fn snapshots_gvr() -> Gvr {
    Gvr::new("snapshot.storage.k8s.io", "v1", "volumesnapshots")
}

/// One node, a network class with a default snapshot class and a stalling one, the
/// app's namespace `db`, repositories in a bucket named after `bucket`.
fn world(bucket: &str) -> World {
    let w = World::builder(MASTER)
        .node(NodeSpec::new("node-a"))
        .storage_class(StorageClassSpec::network("csi").default_class())
        .namespace("db")
        .policies(POLICIES)
        .mover_keys(Keys::Garage)
        .bucket(bucket)
        .build();
    let classes = Gvr::new("snapshot.storage.k8s.io", "v1", "volumesnapshotclasses");
    for (name, params, default) in [
        ("csi-snap", json!({}), true),
        ("stalling", json!({"stall": "true"}), false),
    ] {
        let mut meta = json!({"name": name});
        if default {
            meta["annotations"] =
                json!({"snapshot.storage.kubernetes.io/is-default-class": "true"});
        }
        w.cluster
            .store()
            .create_json(
                &classes,
                "",
                json!({"metadata": meta, "driver": "network.csi.example.com",
                       "deletionPolicy": "Delete", "parameters": params}),
            )
            .unwrap();
    }
    w
}

/// A PVC with files and an app pod whose annotations declare hooks.
async fn app(
    w: &World,
    pvc: &str,
    pvc_annotations: &[(&str, &str)],
    pod_annotations: &[(&str, &str)],
    files: &[(&str, &str)],
) -> PathBuf {
    let mut spec = PvcSpec::new(pvc).label("backup", "hourly");
    for (k, v) in pvc_annotations {
        spec = spec.annotation(k, v);
    }
    w.cluster.create_pvc("db", &spec).unwrap();
    let ann: BTreeMap<&str, &str> = pod_annotations.iter().copied().collect();
    let pod: Pod = obj(json!({
        "metadata": {"name": format!("app-{pvc}"), "namespace": "db", "annotations": ann},
        "spec": {
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000},
            "containers": [
                {"name": "sidecar", "image": "registry.example/sidecar:1"},
                {"name": "app", "image": "registry.example/app:1",
                 "volumeMounts": [{"name": "data", "mountPath": "/data"}]}
            ],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": pvc}}],
        }
    }));
    w.cluster.store().create(&pod).unwrap();
    w.cluster
        .wait_for(WAIT, |s| {
            let p: Pod = s.get("db", &format!("app-{pvc}"))?;
            (p.status?.phase.as_deref() == Some("Running")).then_some(())
        })
        .await
        .unwrap();
    let dir = w.cluster.volume_dir("db", pvc).unwrap();
    for (name, content) in files {
        std::fs::write(dir.join(name), content).unwrap();
    }
    dir
}

async fn scheduler(w: &World, now: &str) -> (bool, String) {
    w.scheduler_with(now, &[COPY_TIMEOUT, ORPHAN_GRACE]).await
}

fn ann(w: &World, pvc: &str, key: &str) -> Option<String> {
    let p: PersistentVolumeClaim = w.cluster.store().get("db", pvc).unwrap();
    p.metadata.annotations.unwrap_or_default().get(key).cloned()
}

fn events(w: &World, pvc: &str, reason: &str) -> Vec<String> {
    w.events("db", pvc, reason)
}

/// The newest snapshot's content, restored into a fresh directory.
fn restored(w: &World, pvc: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = w.mover("db", pvc, &["restore", dir.path().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// Temporary objects of stowage's copies still present: (kind, name).
fn temporaries(w: &World) -> Vec<(String, String)> {
    let store = w.cluster.store();
    let mut out = Vec::new();
    for p in store.list_json(&Gvr::core("persistentvolumeclaims"), Some("db"), None) {
        if p["metadata"]["labels"]["app.kubernetes.io/component"] == "backup-copy" {
            out.push(("pvc".into(), p["metadata"]["name"].as_str().unwrap().into()));
        }
    }
    for v in store.list_json(&snapshots_gvr(), Some("db"), None) {
        out.push((
            "volumesnapshot".into(),
            v["metadata"]["name"].as_str().unwrap().into(),
        ));
    }
    out
}

fn tags(s: &Value) -> Vec<String> {
    serde_json::from_value(s["tags"].clone()).unwrap_or_default()
}

/// Hooks that freeze by writing a marker into the volume and thaw by removing it.
fn freeze_hooks() -> Vec<(&'static str, &'static str)> {
    vec![
        (
            "pre.hook.backup.velero.io/command",
            r#"["/bin/sh", "-c", "echo frozen > /data/FROZEN"]"#,
        ),
        ("pre.hook.backup.velero.io/container", "app"),
        (
            "post.hook.backup.velero.io/command",
            r#"["/bin/sh", "-c", "rm -f /data/FROZEN"]"#,
        ),
        ("post.hook.backup.velero.io/container", "app"),
        ("pre.hook.backup.velero.io/timeout", "2s"),
        ("post.hook.backup.velero.io/timeout", "2s"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_and_clone_back_up_the_frozen_point_in_time_and_clean_up() {
    let w = world("copy-methods");
    let hooks = freeze_hooks();
    let snap_dir = app(
        &w,
        "pg-snap",
        &[(cons::COPY_METHOD, "Snapshot")],
        &hooks,
        &[("data.txt", "snapshot v1")],
    )
    .await;
    let clone_dir = app(
        &w,
        "pg-clone",
        &[(cons::COPY_METHOD, "Clone")],
        &hooks,
        &[("data.txt", "clone v1")],
    )
    .await;

    let (ok, log) = scheduler(&w, "2026-11-23T10:00:00Z").await;
    assert!(ok, "{log}");
    // Within the pass: frozen, copied, thawed. The live volumes are thawed again and
    // change on, the copies do not.
    for dir in [&snap_dir, &clone_dir] {
        assert!(!dir.join("FROZEN").exists(), "post hook did not run: {log}");
        std::fs::write(dir.join("data.txt"), "changed after the point in time").unwrap();
    }
    let jobs = w.jobs_finished().await;
    assert_eq!(jobs.len(), 2);
    for j in &jobs {
        // The mover read the temporary copy, named like its Job.
        let claim = j
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .volumes
            .as_ref()
            .unwrap()[0]
            .persistent_volume_claim
            .as_ref()
            .unwrap()
            .claim_name
            .clone();
        assert_eq!(Some(claim), j.metadata.name.clone());
    }
    let (ok, log) = scheduler(&w, "2026-11-23T10:05:00Z").await;
    assert!(ok, "{log}");

    for (pvc, method, content) in [
        ("pg-snap", "snapshot", "snapshot v1"),
        ("pg-clone", "clone", "clone v1"),
    ] {
        assert_eq!(
            ann(&w, pvc, status::LAST_RESULT).as_deref(),
            Some("Succeeded"),
            "{pvc}: {log}\n{}",
            w.cluster.all_pod_logs()
        );
        assert_eq!(
            ann(&w, pvc, cons::LAST_COPY_METHOD).as_deref(),
            Some(if method == "snapshot" {
                "Snapshot"
            } else {
                "Clone"
            })
        );
        assert_eq!(
            ann(&w, pvc, cons::LAST_HOOKS).as_deref(),
            Some("pre=Succeeded post=Succeeded")
        );
        assert_eq!(ann(&w, pvc, cons::HOOK_STATE), None);
        let snaps = w.snapshots("db", pvc);
        assert_eq!(snaps.len(), 1);
        let t = tags(&snaps[0]);
        for want in [
            format!("copy-method={method}"),
            "pre-hook=Succeeded".into(),
            "post-hook=Succeeded".into(),
            format!("pvc={pvc}"),
        ] {
            assert!(t.contains(&want), "{pvc}: {t:?}");
        }
        // The snapshot holds the volume as it was while frozen.
        let r = restored(&w, pvc);
        assert_eq!(
            std::fs::read_to_string(r.path().join("data.txt")).unwrap(),
            content
        );
        assert_eq!(
            std::fs::read_to_string(r.path().join("FROZEN")).unwrap(),
            "frozen\n"
        );
    }
    // Hooks ran in the named container, pre before post, once each per PVC.
    let ex = records(w.cluster.root());
    let ends: Vec<(&str, &str)> = ex
        .iter()
        .filter(|r| r.event == "end")
        .map(|r| (r.pod.as_str(), r.command[2].as_str()))
        .collect();
    assert_eq!(ends.len(), 4, "{ex:?}");
    assert!(ex.iter().all(|r| r.container == "app"));
    assert_eq!(temporaries(&w), Vec::<(String, String)>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_hooks_run_around_the_mover_and_on_error_decides() {
    let w = world("direct-hooks");
    let hooks = freeze_hooks();
    let dir = app(&w, "app-direct", &[], &hooks, &[("data.txt", "direct")]).await;
    let mut failing = vec![
        (
            "pre.hook.backup.velero.io/command",
            r#"["/bin/sh", "-c", "echo no database >&2; exit 3"]"#,
        ),
        ("pre.hook.backup.velero.io/container", "app"),
        ("post.hook.backup.velero.io/container", "app"),
    ];
    failing.push((
        "post.hook.backup.velero.io/command",
        r#"["/bin/sh", "-c", "touch /data/THAWED"]"#,
    ));
    let fail_dir = app(&w, "app-fail", &[], &failing, &[("f", "x")]).await;
    let mut cont = failing.clone();
    cont.push(("pre.hook.backup.velero.io/on-error", "Continue"));
    let cont_dir = app(&w, "app-continue", &[], &cont, &[("f", "x")]).await;
    let slow = vec![
        ("pre.hook.backup.velero.io/command", r#"["sleep", "20"]"#),
        ("pre.hook.backup.velero.io/timeout", "1s"),
        ("post.hook.backup.velero.io/container", "app"),
        (
            "post.hook.backup.velero.io/command",
            r#"["/bin/sh", "-c", "touch /data/THAWED"]"#,
        ),
    ];
    let slow_dir = app(&w, "app-slow", &[], &slow, &[("f", "x")]).await;

    let (ok, log) = scheduler(&w, "2026-11-23T10:00:00Z").await;
    // Two backups were refused by their pre hooks (the slow one as TimedOut below: its
    // 20 s sleep was cut by the 1 s timeout): their PVCs' problems, not a failed run.
    assert!(ok, "{log}");
    // Direct: the app stays frozen while the mover reads the live volume.
    assert!(dir.join("FROZEN").exists(), "{log}");
    let jobs = w.jobs_finished().await;
    let names: Vec<String> = jobs
        .iter()
        .map(|j| j.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(jobs.len(), 2, "{names:?}");
    // on-error Fail (exit 3) and a timeout: no Job, post hook ran at once, reason recorded.
    for (pvc, d, word) in [
        ("app-fail", &fail_dir, "Failed"),
        ("app-slow", &slow_dir, "TimedOut"),
    ] {
        assert!(!names.iter().any(|n| n.contains(pvc)), "{pvc} got a Job");
        assert!(
            d.join("THAWED").exists(),
            "{pvc}: post hook did not run: {:?} {log}\n{:?}",
            ann(&w, pvc, cons::LAST_HOOKS),
            records(w.cluster.root())
        );
        assert_eq!(
            ann(&w, pvc, status::LAST_RESULT).as_deref(),
            Some("Failed: PreHookFailed")
        );
        assert_eq!(
            ann(&w, pvc, cons::LAST_HOOKS),
            Some(format!("pre={word} post=Succeeded"))
        );
        let ev = events(&w, pvc, cons::reason::PRE_HOOK_FAILED);
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert!(ev[0].contains("no backup was made"), "{ev:?}");
        if pvc == "app-fail" {
            assert!(
                ev[0].contains("no database"),
                "stderr in the reason: {ev:?}"
            );
        }
        assert_eq!(ann(&w, pvc, cons::HOOK_STATE), None);
    }
    // on-error Continue: backed up anyway; the post hook waits for the result.
    assert!(!cont_dir.join("THAWED").exists());
    assert!(ann(&w, "app-continue", cons::HOOK_STATE).is_some());

    // The pass that harvests the results runs the post hooks.
    let (_, log) = scheduler(&w, "2026-11-23T10:05:00Z").await;
    assert!(!dir.join("FROZEN").exists(), "{log}");
    assert!(cont_dir.join("THAWED").exists(), "{log}");
    assert_eq!(
        ann(&w, "app-continue", cons::LAST_HOOKS).as_deref(),
        Some("pre=Failed post=Succeeded")
    );
    assert_eq!(
        ann(&w, "app-direct", status::LAST_RESULT).as_deref(),
        Some("Succeeded"),
        "{log}"
    );
    let t = tags(&w.snapshots("db", "app-continue")[0]);
    assert!(t.contains(&"pre-hook=Failed".to_string()), "{t:?}");
    assert!(t.contains(&"copy-method=direct".to_string()), "{t:?}");
    // The mover read the volume while frozen.
    let r = restored(&w, "app-direct");
    assert!(r.path().join("FROZEN").exists());

    // Order: the pre hook ended before the mover started, the post hook began after
    // it finished.
    let ex = records(w.cluster.root());
    let when = |pod: &str, event: &str, nth: usize| -> jiff::Timestamp {
        ex.iter()
            .filter(|r| r.pod == pod && r.event == event)
            .nth(nth)
            .unwrap()
            .time
            .parse()
            .unwrap()
    };
    let job = jobs
        .iter()
        .find(|j| j.metadata.name.as_deref().unwrap().contains("app-direct"))
        .unwrap();
    let pods: Vec<Pod> = w.cluster.store().list_labeled(
        Some("db"),
        &format!("job-name={}", job.metadata.name.as_deref().unwrap()),
    );
    let term = pods[0]
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0]
        .state
        .as_ref()
        .unwrap()
        .terminated
        .clone()
        .unwrap();
    let (mover_start, mover_end) = (term.started_at.unwrap().0, term.finished_at.unwrap().0);
    // Pod times have whole seconds (as in Kubernetes).
    assert!(when("app-app-direct", "end", 0).as_second() <= mover_start.as_second());
    assert!(when("app-app-direct", "start", 1) >= mover_end);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_hook_runs_after_a_failed_backup() {
    let w = world("failed-backup-hooks");
    let hooks = freeze_hooks();
    // The namespace's own repository, on an endpoint nobody answers: the mover fails.
    let broken = format!("s3:http://127.0.0.1:9/{}/db/broken", w.bucket());
    let dir = app(
        &w,
        "broken",
        &[("stowage.io/repository", broken.as_str())],
        &hooks,
        &[("f", "x")],
    )
    .await;
    let (_, log) = scheduler(&w, "2026-11-23T10:00:00Z").await;
    assert!(dir.join("FROZEN").exists(), "{log}");
    let jobs = w.jobs_finished().await;
    assert_eq!(jobs.len(), 1);
    let (_, log) = scheduler(&w, "2026-11-23T10:05:00Z").await;
    let result = ann(&w, "broken", status::LAST_RESULT).unwrap_or_default();
    assert!(result.starts_with("Failed"), "{result} {log}");
    assert!(
        !dir.join("FROZEN").exists(),
        "post hook after the failure: {log}"
    );
    assert_eq!(
        ann(&w, "broken", cons::LAST_HOOKS).as_deref(),
        Some("pre=Succeeded post=Succeeded")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_pass_is_thawed_and_cleaned_up_by_the_next() {
    let w = world("killed-pass");
    let hooks = freeze_hooks();
    let dir = app(
        &w,
        "pg",
        &[
            (cons::COPY_METHOD, "Snapshot"),
            (cons::VOLUME_SNAPSHOT_CLASS, "stalling"),
        ],
        &hooks,
        &[("data.txt", "v1")],
    )
    .await;
    let env = w.scheduler_env();
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.extend([ORPHAN_GRACE, (COPY_TIMEOUT.0, "300")]);
    let mut child = w.cluster.spawn_program(
        &bins::path("stowage-scheduler"),
        &["--now", "2026-11-23T10:00:00Z"],
        &env,
        SCHEDULER,
        "killed",
    );
    // Killed while it waits for the snapshot, the app frozen.
    w.cluster
        .wait_for(WAIT, |s| {
            (!s.list_json(&snapshots_gvr(), Some("db"), None).is_empty()).then_some(())
        })
        .await
        .unwrap();
    child.start_kill().unwrap();
    let _ = child.wait().await;
    assert!(dir.join("FROZEN").exists());
    assert!(ann(&w, "pg", cons::HOOK_STATE).is_some());

    // A pass right after leaves the PVC alone: the killed pass's deadline (its hook and
    // copy timeouts) has not passed, it might still be at work.
    let (_, log) = scheduler(&w, "2026-11-23T10:01:00Z").await;
    assert!(dir.join("FROZEN").exists(), "{log}");
    assert_eq!(w.cluster.store().list::<Job>(None).len(), 0);

    // Once it has: the post hooks run, the stale snapshot goes, and with a working
    // class the same backup is made.
    let deadline: jiff::Timestamp = serde_json::from_str::<Value>(
        &ann(&w, "pg", cons::HOOK_STATE).unwrap(),
    )
    .unwrap()["deadline"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    // The deadline is on the pass's clock (--now): the next pass runs past it.
    let after = deadline + jiff::SignedDuration::from_secs(1);
    let later = after + jiff::SignedDuration::from_secs(300);
    w.cluster
        .store()
        .modify::<PersistentVolumeClaim>("db", "pg", |p| {
            p.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(cons::VOLUME_SNAPSHOT_CLASS.into(), "csi-snap".into());
        })
        .unwrap();
    let (ok, log) = scheduler(&w, &after.to_string()).await;
    assert!(ok, "{log}");
    let recovered = events(&w, "pg", "PostHooksRecovered");
    assert_eq!(recovered.len(), 1, "{log}");
    assert!(!dir.join("FROZEN").exists());
    w.jobs_finished().await;
    let (ok, log) = scheduler(&w, &later.to_string()).await;
    assert!(ok, "{log}");
    assert_eq!(
        ann(&w, "pg", status::LAST_RESULT).as_deref(),
        Some("Succeeded"),
        "{log}"
    );
    assert_eq!(temporaries(&w), Vec::<(String, String)>::new());
    // The backup is of the new point in time (frozen by its own pre hook).
    let r = restored(&w, "pg");
    assert!(r.path().join("FROZEN").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_fails_thaws_the_app_and_leaves_nothing_behind() {
    let w = world("snapshot-fails");
    let dir = app(
        &w,
        "pg",
        &[
            (cons::COPY_METHOD, "Snapshot"),
            (cons::VOLUME_SNAPSHOT_CLASS, "no-such-class"),
        ],
        &freeze_hooks(),
        &[("f", "x")],
    )
    .await;
    let (ok, log) = scheduler(&w, "2026-11-23T10:00:00Z").await;
    // The PVC's problem (Event, stowage_backup_problem), not a failed run.
    assert!(ok, "{log}");
    assert!(!dir.join("FROZEN").exists(), "{log}");
    assert_eq!(
        ann(&w, "pg", status::LAST_RESULT).as_deref(),
        Some("Failed: PointInTimeCopyFailed")
    );
    let ev = events(&w, "pg", cons::reason::COPY_FAILED);
    assert!(ev.len() == 1 && ev[0].contains("no-such-class"), "{ev:?}");
    assert_eq!(temporaries(&w), Vec::<(String, String)>::new());
    assert_eq!(w.cluster.store().list::<Job>(None).len(), 0);
}
