//! The simulator's CSI snapshot controller: a VolumeSnapshot of a bound PVC copies the
//! volume's directory at that moment (`cp -a`) and becomes `readyToUse` with a
//! `creationTime`; a PVC provisioned with that snapshot as its data source starts with
//! that content (the provisioner calls [`restore_into`]).
//!
//! Classes: a snapshot names a VolumeSnapshotClass, or the class annotated
//! `snapshot.storage.kubernetes.io/is-default-class: "true"` is used; without either the
//! snapshot gets `status.error` as the snapshot-controller reports it. A class with
//! parameter `stall: "true"` stands for a driver that never finishes (tests of a
//! scheduler killed or timing out while it waits). VolumeSnapshotContents are not
//! simulated (the status names one that does not exist).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::Inner;
use super::controllers::{remove_tree, s};
use crate::fakeapi::Gvr;
use crate::fakeapi::store::now_rfc3339;

fn snapshots() -> Gvr {
    Gvr::new("snapshot.storage.k8s.io", "v1", "volumesnapshots")
}

fn classes() -> Gvr {
    Gvr::new("snapshot.storage.k8s.io", "v1", "volumesnapshotclasses")
}

fn data_dir(inner: &Inner, uid: &str) -> PathBuf {
    inner.root.join("snapshots").join(uid)
}

/// Runs the controller until the runtime stops.
pub(crate) async fn run(inner: Arc<Inner>) {
    loop {
        let mut changes = inner.store.subscribe();
        changes.borrow_and_update();
        sync(&inner);
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

fn set_error(inner: &Inner, ns: &str, name: &str, message: &str) {
    let _ = inner.store.modify_json(&snapshots(), ns, name, |v| {
        v["status"] =
            json!({"readyToUse": false, "error": {"message": message, "time": now_rfc3339()}});
    });
}

fn sync(inner: &Inner) {
    let all = inner.store.list_json(&snapshots(), None, None);
    let class_objs = inner.store.list_json(&classes(), None, None);
    for vs in &all {
        let (ns, name, uid) = (
            s(vs, "/metadata/namespace"),
            s(vs, "/metadata/name"),
            s(vs, "/metadata/uid"),
        );
        if !vs["metadata"]["deletionTimestamp"].is_null()
            || vs["status"]["creationTime"].is_string()
            || vs["status"]["error"].is_object()
        {
            continue;
        }
        let wanted = s(vs, "/spec/volumeSnapshotClassName");
        let class = if wanted.is_empty() {
            class_objs.iter().find(|c| {
                s(
                    c,
                    "/metadata/annotations/snapshot.storage.kubernetes.io~1is-default-class",
                ) == "true"
            })
        } else {
            class_objs.iter().find(|c| s(c, "/metadata/name") == wanted)
        };
        let Some(class) = class else {
            let msg = if wanted.is_empty() {
                "Failed to set default snapshot class with error cannot find default snapshot class"
                    .to_string()
            } else {
                format!(
                    "Failed to get snapshot class with error volumesnapshotclass.snapshot.storage.k8s.io \"{wanted}\" not found"
                )
            };
            set_error(inner, ns, name, &msg);
            continue;
        };
        if s(class, "/parameters/stall") == "true" {
            continue;
        }
        let source = s(vs, "/spec/source/persistentVolumeClaimName");
        let Some(pvc) = inner
            .store
            .get_json(&Gvr::core("persistentvolumeclaims"), ns, source)
        else {
            continue;
        };
        if s(&pvc, "/status/phase") != "Bound" {
            continue;
        }
        let Some(pv) = inner.store.get_json(
            &Gvr::core("persistentvolumes"),
            "",
            s(&pvc, "/spec/volumeName"),
        ) else {
            continue;
        };
        let dir = data_dir(inner, uid);
        remove_tree(&dir);
        if std::fs::create_dir_all(&dir).is_err() {
            continue;
        }
        let copied = std::process::Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", s(&pv, "/spec/hostPath/path")))
            .arg(&dir)
            .status()
            .is_ok_and(|st| st.success());
        if !copied {
            set_error(
                inner,
                ns,
                name,
                "the simulated driver could not copy the volume",
            );
            continue;
        }
        let size = pvc["status"]["capacity"]["storage"].clone();
        let content = format!("snapcontent-{uid}");
        let _ = inner.store.modify_json(&snapshots(), ns, name, |v| {
            v["status"] = json!({
                "boundVolumeSnapshotContentName": content,
                "creationTime": now_rfc3339(),
                "readyToUse": true,
                "restoreSize": size,
            });
        });
    }
    // Data of deleted snapshots goes with them.
    let live: Vec<&str> = all.iter().map(|v| s(v, "/metadata/uid")).collect();
    if let Ok(entries) = std::fs::read_dir(inner.root.join("snapshots")) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if !live.contains(&n.as_str()) {
                remove_tree(&e.path());
            }
        }
    }
}

/// Fills a newly provisioned volume `dir` from the VolumeSnapshot `source` (a PVC's
/// `dataSource`) in `ns`. False when the snapshot is missing or not ready: the
/// provisioner waits (and `dir` is removed again).
pub(crate) fn restore_into(inner: &Inner, ns: &str, source: &Value, dir: &Path) -> bool {
    let vs = inner
        .store
        .get_json(&snapshots(), ns, s(source, "/name"))
        .filter(|v| v["status"]["readyToUse"].as_bool() == Some(true));
    let Some(vs) = vs else {
        remove_tree(dir);
        return false;
    };
    let from = data_dir(inner, s(&vs, "/metadata/uid"));
    std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(dir)
        .status()
        .is_ok_and(|st| st.success())
}
