//! Node-local storage in the manner of OpenEBS LocalPV hostpath, against the real PV
//! controller: a claim of a class with [`PROVISIONER`] gets a PV of a directory on the
//! node the real scheduler selected (`volume.kubernetes.io/selected-node`, the
//! WaitForFirstConsumer hand-over), with node affinity to that node; the real binder
//! binds it. Claims with a `dataSourceRef` or `dataSource` are left alone (a populator
//! or a CSI clone would fill them: this provisioner makes only empty volumes). A
//! Released PV of reclaim policy Delete is removed with its directory.
//!
//! [`NAIVE_PROVISIONER`] is the same storage in the manner of rancher local-path: it
//! provisions every claim of its classes, a claim with a foreign `dataSourceRef` too
//! (empty: it does not implement the populator contract), which is what prewarm's
//! storage-class probe must find out.

use std::path::{Path, PathBuf};

use ::kube::Client;
use ::kube::api::{Api, DeleteParams, PostParams};
use ::kube::runtime::{WatchStreamExt, watcher};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use serde_json::json;

use super::ControlPlane;

/// The provisioner name of the node-local classes.
pub const PROVISIONER: &str = "local.stowage.test/hostpath";
/// The annotation the PV controller sets on claims an external provisioner is to
/// provision.
pub const STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
/// The scheduler's choice of node for a WaitForFirstConsumer claim.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// Which provisioner made a PV.
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";

/// What the provisioner does with a claim.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Not ours, already bound, or waiting for the scheduler.
    Ignore,
    /// Someone else fills it (populator, clone): not provisioned here.
    Foreign,
    /// A PV on this node.
    Provision { node: String },
}

/// The provisioner name of the classes of the naive provisioner (in the manner of
/// rancher local-path, under a name that no list of prewarm knows: only its probe can
/// judge it).
pub const NAIVE_PROVISIONER: &str = "naive.stowage.test/local-path";

/// How a provisioner treats claims: its name, and whether it leaves claims with a
/// data source to their populator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Style {
    pub provisioner: &'static str,
    pub respects_populators: bool,
}

/// The node-local provisioner in the manner of OpenEBS LocalPV ([`PROVISIONER`]).
pub const LOCAL_PV: Style = Style {
    provisioner: PROVISIONER,
    respects_populators: true,
};
/// The provisioner in the manner of rancher local-path ([`NAIVE_PROVISIONER`]).
pub const LOCAL_PATH: Style = Style {
    provisioner: NAIVE_PROVISIONER,
    respects_populators: false,
};

/// The decision for `pvc` (pure: the claim and the class's binding mode).
pub fn decide(pvc: &PersistentVolumeClaim, default_node: &str) -> Decision {
    decide_as(LOCAL_PV, pvc, default_node)
}

/// The decision of a provisioner of `style` for `pvc`.
pub fn decide_as(style: Style, pvc: &PersistentVolumeClaim, default_node: &str) -> Decision {
    let ann = pvc.metadata.annotations.clone().unwrap_or_default();
    let spec = pvc.spec.clone().unwrap_or_default();
    if ann.get(STORAGE_PROVISIONER).map(String::as_str) != Some(style.provisioner)
        || spec.volume_name.is_some()
        || pvc.metadata.deletion_timestamp.is_some()
    {
        return Decision::Ignore;
    }
    if style.respects_populators && (spec.data_source_ref.is_some() || spec.data_source.is_some()) {
        return Decision::Foreign;
    }
    // The PV controller hands a WaitForFirstConsumer claim over only once the
    // scheduler selected a node; an Immediate one goes to the default node.
    let node = ann
        .get(SELECTED_NODE)
        .cloned()
        .unwrap_or_else(|| default_node.to_string());
    Decision::Provision { node }
}

/// The node-local provisioner, on a runtime of its own.
pub struct Provisioner {
    pub root: PathBuf,
    _rt: tokio::runtime::Runtime,
}

impl Provisioner {
    /// Creates `classes` and starts the provisioner; volumes are directories under
    /// `<control plane dir>/volumes/`.
    pub fn start(
        cp: &'static ControlPlane,
        default_node: &str,
        classes: Vec<StorageClass>,
    ) -> Provisioner {
        Provisioner::start_as(cp, LOCAL_PV, default_node, classes)
    }

    /// [`Provisioner::start`] for a provisioner of `style` (volumes under
    /// `<control plane dir>/volumes/<provisioner>/`: one per provisioner).
    pub fn start_as(
        cp: &'static ControlPlane,
        style: Style,
        default_node: &str,
        classes: Vec<StorageClass>,
    ) -> Provisioner {
        let root = if style == LOCAL_PV {
            cp.dir.join("volumes")
        } else {
            cp.dir
                .join("volumes")
                .join(style.provisioner.replace('/', "_"))
        };
        std::fs::create_dir_all(&root).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .thread_name("provisioner")
            .build()
            .unwrap();
        let (r, node) = (root.clone(), default_node.to_string());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        rt.spawn(async move {
            let client = cp.client().await;
            let api = Api::<StorageClass>::all(client.clone());
            for class in classes {
                match api.create(&PostParams::default(), &class).await {
                    Ok(_) => {}
                    Err(::kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => panic!("create StorageClass: {e}"),
                }
            }
            let _ = ready_tx.send(());
            tokio::spawn(reclaim(client.clone(), r.clone(), style));
            provision(client, r, node, style).await;
        });
        ready_rx
            .recv()
            .expect("the provisioner created its StorageClasses");
        Provisioner { root, _rt: rt }
    }
}

/// A StorageClass of this provisioner (`WaitForFirstConsumer` unless `immediate`).
pub fn storage_class(name: &str, default: bool, immediate: bool) -> StorageClass {
    class_of(LOCAL_PV, name, default, immediate, "Delete")
}

/// A StorageClass of a provisioner of `style` with reclaim policy `reclaim`.
pub fn class_of(
    style: Style,
    name: &str,
    default: bool,
    immediate: bool,
    reclaim: &str,
) -> StorageClass {
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": {
            "storageclass.kubernetes.io/is-default-class": if default { "true" } else { "false" }}},
        "provisioner": style.provisioner,
        "reclaimPolicy": reclaim,
        "volumeBindingMode": if immediate { "Immediate" } else { "WaitForFirstConsumer" },
    }))
    .unwrap()
}

async fn provision(client: Client, root: PathBuf, default_node: String, style: Style) {
    let pvcs = Api::<PersistentVolumeClaim>::all(client.clone());
    let pvs = Api::<PersistentVolume>::all(client.clone());
    let classes = Api::<StorageClass>::all(client.clone());
    let mut stream = watcher(pvcs, watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .boxed();
    while let Some(pvc) = stream.next().await {
        let Ok(pvc) = pvc else { continue };
        let Decision::Provision { node } = decide_as(style, &pvc, &default_node) else {
            continue;
        };
        let uid = pvc.metadata.uid.clone().unwrap_or_default();
        let name = format!("pvc-{uid}");
        let dir = root.join(&name);
        if std::fs::create_dir_all(&dir).is_err() {
            continue;
        }
        let spec = pvc.spec.clone().unwrap_or_default();
        // The class's reclaim policy, as a provisioner gives it to its volumes.
        let reclaim = match &spec.storage_class_name {
            Some(c) => classes
                .get_opt(c)
                .await
                .ok()
                .flatten()
                .and_then(|c| c.reclaim_policy)
                .unwrap_or_else(|| "Delete".into()),
            None => "Delete".into(),
        };
        let size = spec
            .resources
            .and_then(|r| r.requests)
            .and_then(|r| r.get("storage").cloned());
        let pv: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": {PROVISIONED_BY: style.provisioner}},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": spec.access_modes,
                "volumeMode": spec.volume_mode.unwrap_or_else(|| "Filesystem".into()),
                "storageClassName": spec.storage_class_name,
                "persistentVolumeReclaimPolicy": reclaim,
                "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                             "namespace": pvc.metadata.namespace, "name": pvc.metadata.name, "uid": uid},
                "local": {"path": dir.display().to_string()},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}},
            },
        }))
        .unwrap();
        // 409: provisioned on an earlier event of the same claim.
        let _ = pvs.create(&PostParams::default(), &pv).await;
    }
}

/// Deletes Released PVs of this provisioner with policy Delete, and their directories.
async fn reclaim(client: Client, root: PathBuf, style: Style) {
    let pvs = Api::<PersistentVolume>::all(client);
    let mut stream = watcher(pvs.clone(), watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .boxed();
    while let Some(pv) = stream.next().await {
        let Ok(pv) = pv else { continue };
        let ours = pv
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(PROVISIONED_BY))
            .is_some_and(|p| p == style.provisioner);
        let spec = pv.spec.clone().unwrap_or_default();
        let released = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
        if !ours || !released || spec.persistent_volume_reclaim_policy.as_deref() != Some("Delete")
        {
            continue;
        }
        if let Some(path) = spec.local.map(|l| l.path)
            && Path::new(&path).starts_with(&root)
        {
            let _ = std::fs::remove_dir_all(&path);
        }
        let name = pv.metadata.name.clone().unwrap_or_default();
        let _ = pvs.delete(&name, &DeleteParams::default()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pvc(ann: &[(&str, &str)], spec: serde_json::Value) -> PersistentVolumeClaim {
        let ann: serde_json::Map<String, serde_json::Value> =
            ann.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        serde_json::from_value(json!({"metadata": {"name": "c", "annotations": ann}, "spec": spec}))
            .unwrap()
    }

    #[test]
    fn provisions_on_the_selected_node_and_leaves_others_alone() {
        let ours = (STORAGE_PROVISIONER, PROVISIONER);
        assert_eq!(
            decide(
                &pvc(&[ours, (SELECTED_NODE, "node-b")], json!({})),
                "node-a"
            ),
            Decision::Provision {
                node: "node-b".into()
            }
        );
        assert_eq!(
            decide(&pvc(&[ours], json!({})), "node-a"),
            Decision::Provision {
                node: "node-a".into()
            }
        );
        assert_eq!(
            decide(&pvc(&[(STORAGE_PROVISIONER, "other")], json!({})), "n"),
            Decision::Ignore
        );
        assert_eq!(
            decide(&pvc(&[ours], json!({"volumeName": "pv"})), "n"),
            Decision::Ignore
        );
        let populated =
            json!({"dataSourceRef": {"apiGroup": "stowage.io", "kind": "Restore", "name": "r"}});
        assert_eq!(
            decide(&pvc(&[ours], populated.clone()), "n"),
            Decision::Foreign
        );
        // In the manner of rancher local-path: provisioned all the same (empty).
        let naive = (STORAGE_PROVISIONER, NAIVE_PROVISIONER);
        assert_eq!(
            decide_as(
                LOCAL_PATH,
                &pvc(&[naive, (SELECTED_NODE, "b")], populated),
                "a"
            ),
            Decision::Provision { node: "b".into() }
        );
        assert_eq!(
            decide_as(LOCAL_PATH, &pvc(&[ours], json!({})), "a"),
            Decision::Ignore
        );
    }
}
