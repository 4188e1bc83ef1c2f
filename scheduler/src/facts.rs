//! Turns API objects into the plain facts the planner decides on.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim, Pod};
use stowage_common::k8s::contract::{self, app, label};
pub use stowage_common::k8s::pvc::quantity_bytes;

use crate::plan::{ActiveJob, Consumer, NamespaceFacts, PvcFacts};

pub fn namespace_facts(ns: &Namespace) -> NamespaceFacts {
    NamespaceFacts {
        labels: ns.metadata.labels.clone().unwrap_or_default(),
        annotations: ns.metadata.annotations.clone().unwrap_or_default(),
        terminating: ns.metadata.deletion_timestamp.is_some()
            || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating"),
    }
}

/// Whether `pod` is one of stowage's own (its movers never count as the app).
fn is_stowage(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(app::MANAGED_BY))
        .is_some_and(|v| v == app::STOWAGE)
}

/// The pods (not finished, not stowage's) that mount `claim`.
pub fn consumers(pods: &[Pod], claim: &str) -> Vec<Consumer> {
    let mut out = Vec::new();
    for pod in pods {
        if is_stowage(&pod.metadata) {
            continue;
        }
        let Some(spec) = &pod.spec else { continue };
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded") | Some("Failed")) {
            continue;
        }
        let Some(vol) = spec.volumes.iter().flatten().find(|v| {
            v.persistent_volume_claim
                .as_ref()
                .is_some_and(|c| c.claim_name == claim)
        }) else {
            continue;
        };
        // The user of the container that mounts the volume wins over the pod's.
        let container = spec
            .containers
            .iter()
            .find(|c| c.volume_mounts.iter().flatten().any(|m| m.name == vol.name));
        let csc = container.and_then(|c| c.security_context.as_ref());
        let psc = spec.security_context.as_ref();
        out.push(Consumer {
            name: pod.metadata.name.clone().unwrap_or_default(),
            node: spec.node_name.clone(),
            running: phase == Some("Running"),
            uid: csc
                .and_then(|s| s.run_as_user)
                .or(psc.and_then(|s| s.run_as_user)),
            gid: csc
                .and_then(|s| s.run_as_group)
                .or(psc.and_then(|s| s.run_as_group)),
            fs_group: psc.and_then(|s| s.fs_group),
            tolerations: spec.tolerations.clone().unwrap_or_default(),
            annotations: pod.metadata.annotations.clone().unwrap_or_default(),
            containers: spec.containers.iter().map(|c| c.name.clone()).collect(),
        });
    }
    out
}

/// Facts of one PVC; `pv` is its bound volume, `pods` the pods of its namespace.
pub fn pvc_facts(
    pvc: &PersistentVolumeClaim,
    pv: Option<&PersistentVolume>,
    pods: &[Pod],
) -> PvcFacts {
    let meta = &pvc.metadata;
    let spec = pvc.spec.clone().unwrap_or_default();
    let status = pvc.status.clone().unwrap_or_default();
    let name = meta.name.clone().unwrap_or_default();
    let bound = status.phase.as_deref() == Some("Bound");
    let populating = !bound
        && spec
            .data_source_ref
            .as_ref()
            .is_some_and(|r| r.api_group.as_deref() == Some(contract::CRD_GROUP));
    let capacity_q = status
        .capacity
        .as_ref()
        .and_then(|c| c.get("storage"))
        .or_else(|| {
            spec.resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("storage"))
        })
        .map(|q| q.0.clone());
    let capacity = capacity_q.as_deref().map(quantity_bytes).unwrap_or(0);
    PvcFacts {
        namespace: meta.namespace.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        labels: meta.labels.clone().unwrap_or_default(),
        annotations: meta.annotations.clone().unwrap_or_default(),
        bound,
        terminating: meta.deletion_timestamp.is_some(),
        block_mode: spec.volume_mode.as_deref() == Some("Block"),
        access_modes: spec.access_modes.clone().unwrap_or_default(),
        capacity_bytes: capacity,
        pv_node_affinity: pv
            .and_then(|pv| pv.spec.as_ref())
            .and_then(|s| s.node_affinity.as_ref())
            .and_then(|a| a.required.clone()),
        consumers: consumers(pods, &name),
        populating,
        managed_by_stowage: is_stowage(meta),
        storage_class: spec.storage_class_name.clone(),
        capacity: capacity_q,
        name,
    }
}

/// Whether a Job has finished (Complete or Failed condition).
pub fn job_finished(job: &Job) -> Option<bool> {
    let conds = job.status.as_ref()?.conditions.as_ref()?;
    for c in conds {
        if c.status == "True" {
            match c.type_.as_str() {
                "Complete" | "SuccessCriteriaMet" => return Some(true),
                "Failed" | "FailureTarget" => return Some(false),
                _ => {}
            }
        }
    }
    None
}

/// Mover Jobs that have not finished (they hold their PVC and a concurrency slot).
pub fn active_jobs(jobs: &[Job]) -> Vec<ActiveJob> {
    jobs.iter()
        .filter(|j| job_finished(j).is_none() && j.metadata.deletion_timestamp.is_none())
        .map(|j| ActiveJob {
            namespace: j.metadata.namespace.clone().unwrap_or_default(),
            name: j.metadata.name.clone().unwrap_or_default(),
            pvc_uid: j
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(label::PVC_UID))
                .cloned()
                .unwrap_or_default(),
        })
        .collect()
}

/// Pods grouped by namespace.
pub fn pods_by_namespace(pods: Vec<Pod>) -> BTreeMap<String, Vec<Pod>> {
    let mut m: BTreeMap<String, Vec<Pod>> = BTreeMap::new();
    for p in pods {
        m.entry(p.metadata.namespace.clone().unwrap_or_default())
            .or_default()
            .push(p);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumers_take_the_mounting_containers_user() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "pg-0", "namespace": "db"},
            "spec": {
                "nodeName": "node-a",
                "securityContext": {"runAsUser": 1, "fsGroup": 2000},
                "tolerations": [{"key": "dedicated", "operator": "Exists"}],
                "containers": [
                    {"name": "sidecar", "image": "x", "securityContext": {"runAsUser": 7}},
                    {"name": "pg", "image": "pg", "securityContext": {"runAsUser": 999, "runAsGroup": 998},
                     "volumeMounts": [{"name": "data", "mountPath": "/var/lib/pg"}]}
                ],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data-pg-0"}}]
            },
            "status": {"phase": "Running"}
        }))
        .unwrap();
        let mut mover = pod.clone();
        mover.metadata.labels = Some(BTreeMap::from([(
            app::MANAGED_BY.to_string(),
            "stowage".to_string(),
        )]));
        let c = consumers(&[pod, mover], "data-pg-0");
        assert_eq!(c.len(), 1);
        assert_eq!(
            (c[0].uid, c[0].gid, c[0].fs_group, c[0].running),
            (Some(999), Some(998), Some(2000), true)
        );
        assert_eq!(c[0].node.as_deref(), Some("node-a"));
        assert_eq!(c[0].tolerations.len(), 1);
        assert!(consumers(&[], "data-pg-0").is_empty());
    }
}
