//! Point-in-time copy methods of a backup and the temporary objects they need: a
//! `VolumeSnapshot` (snapshot.storage.k8s.io/v1) of the PVC and a PVC restored from it
//! (`Snapshot`), or a clone PVC of the PVC (`Clone`). The mover reads the temporary
//! PVC; the scheduler removes both once the mover Job finished, and removes leftovers
//! of a killed pass by their labels.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, TypedLocalObjectReference,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

use super::contract::{app, consistency, label};
use super::naming::Operation;

/// How the mover gets at the data of a PVC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CopyMethod {
    /// The mover mounts the live volume (read-only). Works everywhere, node-local
    /// volumes included; consistent only with hooks or a quiet app.
    #[default]
    Direct,
    /// A CSI VolumeSnapshot at the backup's point in time, restored into a temporary PVC.
    Snapshot,
    /// A CSI clone of the PVC at the backup's point in time.
    Clone,
}

impl CopyMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            CopyMethod::Direct => "Direct",
            CopyMethod::Snapshot => "Snapshot",
            CopyMethod::Clone => "Clone",
        }
    }

    /// Lower-case form for snapshot tags.
    pub fn tag(self) -> &'static str {
        match self {
            CopyMethod::Direct => "direct",
            CopyMethod::Snapshot => "snapshot",
            CopyMethod::Clone => "clone",
        }
    }
}

impl std::fmt::Display for CopyMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for CopyMethod {
    type Err = String;

    /// Case-insensitive; VolSync's names (`Direct`, `Snapshot`, `Clone`) are accepted.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "direct" => Ok(CopyMethod::Direct),
            "snapshot" => Ok(CopyMethod::Snapshot),
            "clone" => Ok(CopyMethod::Clone),
            other => Err(format!(
                "{} {other:?} is not a copy method: use Direct, Snapshot or Clone",
                consistency::COPY_METHOD
            )),
        }
    }
}

/// API group and version of VolumeSnapshots.
pub const SNAPSHOT_GROUP: &str = "snapshot.storage.k8s.io";
pub const SNAPSHOT_VERSION: &str = "v1";
pub const SNAPSHOT_KIND: &str = "VolumeSnapshot";
pub const SNAPSHOT_PLURAL: &str = "volumesnapshots";

/// The `ApiResource` of VolumeSnapshots, for `Api::<DynamicObject>`.
pub fn volume_snapshot_resource() -> kube::api::ApiResource {
    kube::api::ApiResource {
        group: SNAPSHOT_GROUP.into(),
        version: SNAPSHOT_VERSION.into(),
        api_version: format!("{SNAPSHOT_GROUP}/{SNAPSHOT_VERSION}"),
        kind: SNAPSHOT_KIND.into(),
        plural: SNAPSHOT_PLURAL.into(),
    }
}

/// What the temporary objects of one backup are made from.
#[derive(Debug, Clone, PartialEq)]
pub struct CopySpec {
    pub method: CopyMethod,
    /// Namespace of the PVC (the temporary objects live next to it).
    pub namespace: String,
    /// The PVC backed up.
    pub pvc: String,
    pub pvc_uid: String,
    /// Name of the mover Job; also the name of the temporary objects.
    pub job: String,
    /// VolumeSnapshotClass (`Snapshot`; None: the cluster's default class).
    pub snapshot_class: Option<String>,
    /// Storage class of the temporary PVC (None: the PVC's class).
    pub storage_class: Option<String>,
    /// Size of the temporary PVC: the PVC's capacity (a clone or a restored snapshot
    /// must be at least as large as its source).
    pub size: String,
}

/// Labels of the temporary objects: found again by PVC UID and Job.
pub fn copy_labels(s: &CopySpec, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (app::NAME.into(), "stowage".into()),
        (app::COMPONENT.into(), component.into()),
        (app::PART_OF.into(), app::STOWAGE.into()),
        (app::MANAGED_BY.into(), app::STOWAGE.into()),
        (label::PVC_UID.into(), s.pvc_uid.clone()),
        (label::OPERATION.into(), Operation::Backup.as_str().into()),
        (consistency::LABEL_JOB.into(), s.job.clone()),
    ])
}

/// Label selector of every temporary object of a backup (of a kind: its component).
pub fn copy_selector(component: &str) -> String {
    format!(
        "{}={},{}={}",
        app::MANAGED_BY,
        app::STOWAGE,
        app::COMPONENT,
        component
    )
}

/// The VolumeSnapshot of the PVC (only for [`CopyMethod::Snapshot`]).
pub fn volume_snapshot(s: &CopySpec) -> Value {
    let mut spec = json!({"source": {"persistentVolumeClaimName": s.pvc}});
    if let Some(c) = &s.snapshot_class {
        spec["volumeSnapshotClassName"] = json!(c);
    }
    json!({
        "apiVersion": format!("{SNAPSHOT_GROUP}/{SNAPSHOT_VERSION}"),
        "kind": SNAPSHOT_KIND,
        "metadata": {
            "name": s.job,
            "namespace": s.namespace,
            "labels": copy_labels(s, consistency::COMPONENT_SNAPSHOT),
        },
        "spec": spec,
    })
}

/// The temporary PVC the mover reads: restored from the VolumeSnapshot (`Snapshot`) or
/// cloned from the PVC (`Clone`). None for `Direct`.
pub fn copy_pvc(s: &CopySpec) -> Option<PersistentVolumeClaim> {
    let source = match s.method {
        CopyMethod::Direct => return None,
        CopyMethod::Snapshot => TypedLocalObjectReference {
            api_group: Some(SNAPSHOT_GROUP.into()),
            kind: SNAPSHOT_KIND.into(),
            name: s.job.clone(),
        },
        CopyMethod::Clone => TypedLocalObjectReference {
            api_group: None,
            kind: "PersistentVolumeClaim".into(),
            name: s.pvc.clone(),
        },
    };
    Some(PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(s.job.clone()),
            namespace: Some(s.namespace.clone()),
            labels: Some(copy_labels(s, consistency::COMPONENT_COPY)),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: s.storage_class.clone(),
            volume_mode: Some("Filesystem".into()),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(s.size.clone()),
                )])),
                ..Default::default()
            }),
            data_source: Some(source),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The state of a VolumeSnapshot from its status: Ok(true) once the point in time is
/// taken (`creationTime` set or `readyToUse`), Err with the controller's message when
/// it failed.
pub fn snapshot_taken(snapshot: &Value) -> Result<bool, String> {
    let st = &snapshot["status"];
    if let Some(msg) = st["error"]["message"].as_str() {
        return Err(msg.to_string());
    }
    Ok(st["readyToUse"].as_bool() == Some(true) || st["creationTime"].is_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(method: CopyMethod) -> CopySpec {
        CopySpec {
            method,
            namespace: "db".into(),
            pvc: "data-pg-0".into(),
            pvc_uid: "uid-1".into(),
            job: "stowage-backup-data-pg-0-0123456789".into(),
            snapshot_class: Some("longhorn-snap".into()),
            storage_class: Some("longhorn".into()),
            size: "10Gi".into(),
        }
    }

    fn labels(component: &str) -> Value {
        json!({
            "app.kubernetes.io/component": component,
            "app.kubernetes.io/managed-by": "stowage",
            "app.kubernetes.io/name": "stowage",
            "app.kubernetes.io/part-of": "stowage",
            "stowage.io/job": "stowage-backup-data-pg-0-0123456789",
            "stowage.io/operation": "backup",
            "stowage.io/pvc-uid": "uid-1"
        })
    }

    #[test]
    fn volume_snapshot_matches_the_expected_manifest() {
        assert_eq!(
            volume_snapshot(&spec(CopyMethod::Snapshot)),
            json!({
                "apiVersion": "snapshot.storage.k8s.io/v1",
                "kind": "VolumeSnapshot",
                "metadata": {
                    "name": "stowage-backup-data-pg-0-0123456789",
                    "namespace": "db",
                    "labels": labels("backup-snapshot")
                },
                "spec": {
                    "volumeSnapshotClassName": "longhorn-snap",
                    "source": {"persistentVolumeClaimName": "data-pg-0"}
                }
            })
        );
        let mut s = spec(CopyMethod::Snapshot);
        s.snapshot_class = None;
        assert!(volume_snapshot(&s)["spec"]["volumeSnapshotClassName"].is_null());
    }

    #[test]
    fn snapshot_pvc_matches_the_expected_manifest() {
        let pvc = serde_json::to_value(copy_pvc(&spec(CopyMethod::Snapshot)).unwrap()).unwrap();
        assert_eq!(
            pvc,
            json!({
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {
                    "name": "stowage-backup-data-pg-0-0123456789",
                    "namespace": "db",
                    "labels": labels("backup-copy")
                },
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": "longhorn",
                    "volumeMode": "Filesystem",
                    "resources": {"requests": {"storage": "10Gi"}},
                    "dataSource": {
                        "apiGroup": "snapshot.storage.k8s.io",
                        "kind": "VolumeSnapshot",
                        "name": "stowage-backup-data-pg-0-0123456789"
                    }
                }
            }),
            "\n{}",
            serde_json::to_string_pretty(&pvc).unwrap()
        );
    }

    #[test]
    fn clone_pvc_matches_the_expected_manifest() {
        let mut s = spec(CopyMethod::Clone);
        s.storage_class = None;
        let pvc = serde_json::to_value(copy_pvc(&s).unwrap()).unwrap();
        assert_eq!(
            pvc,
            json!({
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {
                    "name": "stowage-backup-data-pg-0-0123456789",
                    "namespace": "db",
                    "labels": labels("backup-copy")
                },
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "volumeMode": "Filesystem",
                    "resources": {"requests": {"storage": "10Gi"}},
                    "dataSource": {"kind": "PersistentVolumeClaim", "name": "data-pg-0"}
                }
            })
        );
        assert!(copy_pvc(&spec(CopyMethod::Direct)).is_none());
    }

    #[test]
    fn methods_parse_case_insensitively() {
        assert_eq!("Snapshot".parse::<CopyMethod>(), Ok(CopyMethod::Snapshot));
        assert_eq!("clone".parse::<CopyMethod>(), Ok(CopyMethod::Clone));
        assert_eq!(" DIRECT ".parse::<CopyMethod>(), Ok(CopyMethod::Direct));
        let e = "csi".parse::<CopyMethod>().unwrap_err();
        assert!(e.contains("Direct, Snapshot or Clone"), "{e}");
    }

    #[test]
    fn snapshot_state() {
        assert_eq!(snapshot_taken(&json!({})), Ok(false));
        assert_eq!(
            snapshot_taken(&json!({"status": {"creationTime": "2026-01-01T00:00:00Z"}})),
            Ok(true)
        );
        assert_eq!(
            snapshot_taken(&json!({"status": {"readyToUse": true}})),
            Ok(true)
        );
        assert_eq!(
            snapshot_taken(&json!({"status": {"error": {"message": "no class"}}})),
            Err("no class".into())
        );
    }

    #[test]
    fn selector_finds_the_labelled_objects() {
        assert_eq!(
            copy_selector(consistency::COMPONENT_COPY),
            "app.kubernetes.io/managed-by=stowage,app.kubernetes.io/component=backup-copy"
        );
    }
}
