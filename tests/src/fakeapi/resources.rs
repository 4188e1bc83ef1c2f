//! What the fake API knows about resource types: the `kind` of a plural (for list
//! responses and defaults), whether it is cluster-scoped, and whether it has a `status`
//! subresource (which decides whether writes to the main resource may change status).
//! Unknown plurals are accepted: their kind is inferred and they are treated as having
//! no status subresource.

use serde::{Deserialize, Serialize};

/// A resource type: API group (`""` for core), version and plural.
///
/// Objects are stored version-agnostically: two versions of one group and plural
/// address the same objects.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Gvr {
    /// API group, `""` for the core group.
    pub group: String,
    /// API version (`v1`).
    pub version: String,
    /// Plural resource name (`persistentvolumeclaims`).
    pub plural: String,
}

impl Gvr {
    /// A resource type from its parts.
    pub fn new(group: &str, version: &str, plural: &str) -> Self {
        Gvr {
            group: group.to_string(),
            version: version.to_string(),
            plural: plural.to_string(),
        }
    }

    /// A core (`/api/v1`) resource type.
    pub fn core(plural: &str) -> Self {
        Gvr::new("", "v1", plural)
    }

    /// The resource type of a k8s-openapi type.
    pub fn of<K: k8s_openapi::Resource>() -> Self {
        Gvr::new(K::GROUP, K::VERSION, K::URL_PATH_SEGMENT)
    }

    /// `v1` or `group/version`, as in `apiVersion`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural` or `plural.group`, as in Kubernetes error messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The static facts about this resource type.
    pub fn info(&self) -> ResourceInfo {
        info(&self.group, &self.plural)
    }
}

/// Static facts about a resource type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceInfo {
    /// The `kind` of one object (`PersistentVolumeClaim`).
    pub kind: String,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Whether the type has a `/status` subresource: writes to the main resource then
    /// keep the stored status, and creation drops the given one (as the API server does).
    pub status_subresource: bool,
    /// Whether the type is in the table (false: inferred).
    pub known: bool,
}

// (group, plural, kind, namespaced, status subresource)
const TABLE: &[(&str, &str, &str, bool, bool)] = &[
    ("", "pods", "Pod", true, true),
    (
        "",
        "persistentvolumeclaims",
        "PersistentVolumeClaim",
        true,
        true,
    ),
    ("", "persistentvolumes", "PersistentVolume", false, true),
    ("", "namespaces", "Namespace", false, true),
    ("", "nodes", "Node", false, true),
    ("", "secrets", "Secret", true, false),
    ("", "configmaps", "ConfigMap", true, false),
    ("", "serviceaccounts", "ServiceAccount", true, false),
    ("", "events", "Event", true, false),
    ("", "services", "Service", true, true),
    ("", "endpoints", "Endpoints", true, false),
    ("", "resourcequotas", "ResourceQuota", true, true),
    ("", "limitranges", "LimitRange", true, false),
    (
        "",
        "replicationcontrollers",
        "ReplicationController",
        true,
        true,
    ),
    ("batch", "jobs", "Job", true, true),
    ("batch", "cronjobs", "CronJob", true, true),
    ("apps", "deployments", "Deployment", true, true),
    ("apps", "statefulsets", "StatefulSet", true, true),
    ("apps", "daemonsets", "DaemonSet", true, true),
    ("apps", "replicasets", "ReplicaSet", true, true),
    (
        "storage.k8s.io",
        "storageclasses",
        "StorageClass",
        false,
        false,
    ),
    (
        "storage.k8s.io",
        "volumeattachments",
        "VolumeAttachment",
        false,
        true,
    ),
    ("storage.k8s.io", "csidrivers", "CSIDriver", false, false),
    ("storage.k8s.io", "csinodes", "CSINode", false, false),
    ("events.k8s.io", "events", "Event", true, false),
    ("coordination.k8s.io", "leases", "Lease", true, false),
    ("rbac.authorization.k8s.io", "roles", "Role", true, false),
    (
        "rbac.authorization.k8s.io",
        "rolebindings",
        "RoleBinding",
        true,
        false,
    ),
    (
        "rbac.authorization.k8s.io",
        "clusterroles",
        "ClusterRole",
        false,
        false,
    ),
    (
        "rbac.authorization.k8s.io",
        "clusterrolebindings",
        "ClusterRoleBinding",
        false,
        false,
    ),
    (
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        false,
        true,
    ),
    (
        "policy",
        "poddisruptionbudgets",
        "PodDisruptionBudget",
        true,
        true,
    ),
    (
        "populator.storage.k8s.io",
        "volumepopulators",
        "VolumePopulator",
        false,
        false,
    ),
    (
        "snapshot.storage.k8s.io",
        "volumesnapshots",
        "VolumeSnapshot",
        true,
        true,
    ),
    (
        "snapshot.storage.k8s.io",
        "volumesnapshotcontents",
        "VolumeSnapshotContent",
        false,
        true,
    ),
    (
        "snapshot.storage.k8s.io",
        "volumesnapshotclasses",
        "VolumeSnapshotClass",
        false,
        false,
    ),
    ("stowage.io", "restores", "Restore", true, true),
    ("stowage.io", "backups", "Backup", true, true),
];

/// Facts about `plural` of `group`; unknown types get an inferred kind, namespaced,
/// no status subresource.
pub fn info(group: &str, plural: &str) -> ResourceInfo {
    if let Some((_, _, kind, namespaced, status)) =
        TABLE.iter().find(|(g, p, ..)| *g == group && *p == plural)
    {
        return ResourceInfo {
            kind: kind.to_string(),
            namespaced: *namespaced,
            status_subresource: *status,
            known: true,
        };
    }
    ResourceInfo {
        kind: infer_kind(plural),
        namespaced: true,
        status_subresource: false,
        known: false,
    }
}

/// `widgets` → `Widget`, `policies` → `Policy`, `classes` → `Class`.
fn infer_kind(plural: &str) -> String {
    let singular = if let Some(stem) = plural.strip_suffix("ies") {
        format!("{stem}y")
    } else if let Some(stem) = plural.strip_suffix("sses") {
        format!("{stem}ss")
    } else if let Some(stem) = plural.strip_suffix('s') {
        stem.to_string()
    } else {
        plural.to_string()
    };
    let mut chars = singular.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(
            info("", "persistentvolumeclaims").kind,
            "PersistentVolumeClaim"
        );
        assert!(!info("", "persistentvolumes").namespaced);
        assert_eq!(info("x.io", "policies").kind, "Policy");
        assert_eq!(info("x.io", "classes").kind, "Class");
        assert_eq!(info("x.io", "widgets").kind, "Widget");
    }
}
