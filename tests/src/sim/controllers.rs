//! The simulator's control loop: PVC admission (default class, protection finalizer),
//! PV provisioner and binder (with the volume-populator rebind), pod scheduler, kubelet
//! and Job controller, run one after the other on every store change.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::{BindingMode, HOSTNAME_LABEL, Inner, SELECTED_NODE, kubelet};
use crate::fakeapi::store::{now_rfc3339, random_suffix};
use crate::fakeapi::{DeleteOpts, Gvr};

const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";

/// The string at a JSON pointer, `""` when missing.
pub(crate) fn s<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn pvcs() -> Gvr {
    Gvr::core("persistentvolumeclaims")
}

fn pvs() -> Gvr {
    Gvr::core("persistentvolumes")
}

fn pods() -> Gvr {
    Gvr::core("pods")
}

fn jobs() -> Gvr {
    Gvr::new("batch", "v1", "jobs")
}

/// Runs the controllers until the runtime stops.
pub(crate) async fn run(inner: Arc<Inner>) {
    loop {
        let mut changes = inner.store.subscribe();
        changes.borrow_and_update();
        {
            let mut k = inner.kubelet.lock().unwrap_or_else(|e| e.into_inner());
            admission(&inner);
            provision(&inner);
            bind(&inner);
            schedule(&inner);
            kubelet::sync(&inner, &mut k);
            run_jobs(&inner);
        }
        tokio::select! {
            _ = changes.changed() => {}
            // Timers (Job deadlines) need a tick even when nothing changes.
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

/// Removes a directory tree, making it writable first if needed (restored trees may
/// hold read-only directories).
pub(crate) fn remove_tree(dir: &Path) {
    if std::fs::remove_dir_all(dir).is_err() && dir.exists() {
        let _ = std::process::Command::new("chmod")
            .arg("-R")
            .arg("u+rwX")
            .arg(dir)
            .status();
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Whether a `NodeSelector` (`nodeSelectorTerms`, ORed; expressions ANDed) matches.
pub(crate) fn matches_node_selector(
    sel: &Value,
    node: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    let Some(terms) = sel["nodeSelectorTerms"].as_array() else {
        return true;
    };
    terms.iter().any(|t| {
        let exprs = t["matchExpressions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| (e, labels.get(s(e, "/key")).map(String::as_str)));
        let fields = t["matchFields"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| (e, (s(e, "/key") == "metadata.name").then_some(node)));
        exprs.chain(fields).all(|(e, value)| {
            let values: Vec<&str> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            match s(e, "/operator") {
                "In" => value.is_some_and(|v| values.contains(&v)),
                "NotIn" => value.is_none_or(|v| !values.contains(&v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                "Gt" | "Lt" => {
                    let (Some(v), Some(bound)) = (
                        value.and_then(|v| v.parse::<i64>().ok()),
                        values.first().and_then(|b| b.parse::<i64>().ok()),
                    ) else {
                        return false;
                    };
                    if s(e, "/operator") == "Gt" {
                        v > bound
                    } else {
                        v < bound
                    }
                }
                _ => false,
            }
        })
    })
}

/// Default storage class and the protection finalizer, as admission plugins do; and
/// removal of that finalizer from deleted PVCs no live pod uses.
fn admission(inner: &Inner) {
    let store = &inner.store;
    let default_class = store
        .list_json(
            &Gvr::new("storage.k8s.io", "v1", "storageclasses"),
            None,
            None,
        )
        .into_iter()
        .find(|c| {
            s(
                c,
                "/metadata/annotations/storageclass.kubernetes.io~1is-default-class",
            ) == "true"
        })
        .map(|c| s(&c, "/metadata/name").to_string());
    let all_pods = store.list_json(&pods(), None, None);
    for pvc in store.list_json(&pvcs(), None, None) {
        let (ns, name) = (s(&pvc, "/metadata/namespace"), s(&pvc, "/metadata/name"));
        let finalizers: Vec<&str> = pvc["metadata"]["finalizers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if pvc["metadata"]["deletionTimestamp"].is_null() {
            let needs_class = pvc["spec"]["storageClassName"].is_null() && default_class.is_some();
            if needs_class || !finalizers.contains(&PVC_PROTECTION) {
                let _ = store.modify_json(&pvcs(), ns, name, |p| {
                    if p["spec"]["storageClassName"].is_null()
                        && let Some(c) = &default_class
                    {
                        p["spec"]["storageClassName"] = json!(c);
                    }
                    let f = p["metadata"]["finalizers"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    if !f.iter().any(|x| x == PVC_PROTECTION) {
                        let mut f = f;
                        f.push(json!(PVC_PROTECTION));
                        p["metadata"]["finalizers"] = json!(f);
                    }
                });
            }
        } else if finalizers.contains(&PVC_PROTECTION) {
            let in_use = all_pods.iter().any(|p| {
                s(p, "/metadata/namespace") == ns
                    && !matches!(s(p, "/status/phase"), "Succeeded" | "Failed")
                    && p["spec"]["volumes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|v| s(v, "/persistentVolumeClaim/claimName") == name)
            });
            if !in_use {
                let _ = store.modify_json(&pvcs(), ns, name, |p| {
                    if let Some(f) = p["metadata"]["finalizers"].as_array_mut() {
                        f.retain(|x| x != PVC_PROTECTION);
                    }
                });
            }
        }
    }
}

fn sorted_nodes(inner: &Inner) -> Vec<Value> {
    inner.store.list_json(&Gvr::core("nodes"), None, None)
}

fn labels_of(v: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(v["metadata"]["labels"].clone()).unwrap_or_default()
}

/// Creates PVs for Pending PVCs of classes the simulator provisions.
fn provision(inner: &Inner) {
    let store = &inner.store;
    for pvc in store.list_json(&pvcs(), None, None) {
        if !pvc["metadata"]["deletionTimestamp"].is_null()
            || !s(&pvc, "/spec/volumeName").is_empty()
            || s(&pvc, "/status/phase") != "Pending"
        {
            continue;
        }
        let class_name = s(&pvc, "/spec/storageClassName");
        if class_name.is_empty() {
            continue;
        }
        let Some(class) = inner.class_spec(class_name) else {
            continue;
        };
        let (ns, name, uid) = (
            s(&pvc, "/metadata/namespace"),
            s(&pvc, "/metadata/name"),
            s(&pvc, "/metadata/uid"),
        );
        if s(
            &pvc,
            "/metadata/annotations/volume.kubernetes.io~1storage-provisioner",
        ) != class.provisioner
        {
            let _ = store.modify_json(&pvcs(), ns, name, |p| {
                if !p["metadata"]["annotations"].is_object() {
                    p["metadata"]["annotations"] = json!({});
                }
                p["metadata"]["annotations"]["volume.kubernetes.io/storage-provisioner"] =
                    json!(class.provisioner);
            });
        }
        let source = if pvc["spec"]["dataSourceRef"].is_object() {
            &pvc["spec"]["dataSourceRef"]
        } else {
            &pvc["spec"]["dataSource"]
        };
        let source_kind = (s(source, "/apiGroup"), s(source, "/kind"));
        let foreign = source.is_object()
            && !matches!(
                source_kind,
                ("", "PersistentVolumeClaim") | ("snapshot.storage.k8s.io", "VolumeSnapshot")
            );
        if foreign && class.respects_populators {
            // Left for a volume populator, as external-provisioner does.
            continue;
        }
        let node = match class.binding {
            BindingMode::WaitForFirstConsumer => {
                let n = s(
                    &pvc,
                    "/metadata/annotations/volume.kubernetes.io~1selected-node",
                );
                if n.is_empty() {
                    continue;
                }
                Some(n.to_string())
            }
            BindingMode::Immediate if class.node_local => sorted_nodes(inner)
                .first()
                .map(|n| s(n, "/metadata/name").to_string()),
            BindingMode::Immediate => None,
        };
        let pv_name = format!("pvc-{uid}");
        if store.get_json(&pvs(), "", &pv_name).is_some() {
            continue;
        }
        let dir = inner.volumes_dir().join(&pv_name);
        if std::fs::create_dir_all(&dir).is_err() {
            continue;
        }
        if source_kind == ("", "PersistentVolumeClaim") {
            // A clone: copy the source volume.
            let src_ns = match s(source, "/namespace") {
                "" => ns,
                other => other,
            };
            if let Some(src) = store
                .get_json(&pvcs(), src_ns, s(source, "/name"))
                .and_then(|p| store.get_json(&pvs(), "", s(&p, "/spec/volumeName")))
            {
                let from = format!("{}/.", s(&src, "/spec/hostPath/path"));
                let _ = std::process::Command::new("cp")
                    .arg("-a")
                    .arg(from)
                    .arg(&dir)
                    .status();
            }
        }
        // [copy methods] restore from a VolumeSnapshot (snapshots.rs); wait until ready.
        if source_kind == ("snapshot.storage.k8s.io", "VolumeSnapshot")
            && !super::snapshots::restore_into(inner, ns, source, &dir)
        {
            continue;
        }
        let mut spec = json!({
            "capacity": {"storage": pvc["spec"]["resources"]["requests"]["storage"]},
            "accessModes": pvc["spec"]["accessModes"],
            "storageClassName": class_name,
            "persistentVolumeReclaimPolicy": class.reclaim_policy,
            "volumeMode": "Filesystem",
            "hostPath": {"path": dir.to_string_lossy(), "type": "DirectoryOrCreate"},
            "claimRef": {"kind": "PersistentVolumeClaim", "apiVersion": "v1", "namespace": ns, "name": name, "uid": uid},
        });
        if class.node_local
            && let Some(n) = &node
        {
            spec["nodeAffinity"] = json!({"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": HOSTNAME_LABEL, "operator": "In", "values": [n]}]}]}});
        }
        let pv = json!({
            "metadata": {"name": pv_name, "annotations": {"pv.kubernetes.io/provisioned-by": class.provisioner}},
            "spec": spec,
        });
        let _ = store.create_json(&pvs(), "", pv);
    }
}

/// Binds PVs to the PVCs their claimRef names; releases or deletes PVs whose claim is
/// gone; marks PVCs whose volume is gone or taken as Lost.
fn bind(inner: &Inner) {
    let store = &inner.store;
    for pv in store.list_json(&pvs(), None, None) {
        let pv_name = s(&pv, "/metadata/name").to_string();
        let phase = s(&pv, "/status/phase");
        let claim = &pv["spec"]["claimRef"];
        let set_phase = |ph: &str| {
            if phase != ph {
                let _ =
                    store.modify_json(&pvs(), "", &pv_name, |p| p["status"] = json!({"phase": ph}));
            }
        };
        if !claim.is_object() {
            // Statically pre-bound PVCs (spec.volumeName) claim an Available PV.
            let wanting = store.list_json(&pvcs(), None, None).into_iter().find(|p| {
                s(p, "/spec/volumeName") == pv_name
                    && s(p, "/status/phase") == "Pending"
                    && p["metadata"]["deletionTimestamp"].is_null()
            });
            match wanting {
                Some(p) => {
                    let claim_ref = json!({"kind": "PersistentVolumeClaim", "apiVersion": "v1",
                        "namespace": s(&p, "/metadata/namespace"), "name": s(&p, "/metadata/name"), "uid": s(&p, "/metadata/uid")});
                    let _ = store
                        .modify_json(&pvs(), "", &pv_name, |v| v["spec"]["claimRef"] = claim_ref);
                }
                None => set_phase("Available"),
            }
            continue;
        }
        let (cns, cname, cuid) = (s(claim, "/namespace"), s(claim, "/name"), s(claim, "/uid"));
        let pvc = store
            .get_json(&pvcs(), cns, cname)
            .filter(|p| cuid.is_empty() || s(p, "/metadata/uid") == cuid);
        match pvc {
            Some(pvc) => {
                let volume = s(&pvc, "/spec/volumeName");
                if !volume.is_empty() && volume != pv_name {
                    continue;
                }
                let puid = s(&pvc, "/metadata/uid").to_string();
                if cuid.is_empty() {
                    let _ = store.modify_json(&pvs(), "", &pv_name, |v| {
                        v["spec"]["claimRef"]["uid"] = json!(puid)
                    });
                }
                set_phase("Bound");
                if volume.is_empty() || s(&pvc, "/status/phase") != "Bound" {
                    let (capacity, modes) = (
                        pv["spec"]["capacity"].clone(),
                        pv["spec"]["accessModes"].clone(),
                    );
                    let _ = store.modify_json(&pvcs(), cns, cname, |p| {
                        p["spec"]["volumeName"] = json!(pv_name);
                        if !p["metadata"]["annotations"].is_object() {
                            p["metadata"]["annotations"] = json!({});
                        }
                        let a = &mut p["metadata"]["annotations"];
                        a["pv.kubernetes.io/bind-completed"] = json!("yes");
                        a["pv.kubernetes.io/bound-by-controller"] = json!("yes");
                        p["status"] =
                            json!({"phase": "Bound", "capacity": capacity, "accessModes": modes});
                    });
                }
            }
            None if cuid.is_empty() => set_phase("Available"),
            None => {
                if s(&pv, "/spec/persistentVolumeReclaimPolicy") == "Delete" {
                    let path = s(&pv, "/spec/hostPath/path");
                    // Only directories the simulator made are removed.
                    if Path::new(path).starts_with(inner.volumes_dir()) {
                        remove_tree(Path::new(path));
                    }
                    let _ = store.delete_json(&pvs(), "", &pv_name, &DeleteOpts::background());
                } else {
                    set_phase("Released");
                }
            }
        }
    }
    // PVCs whose volume vanished or was handed to another claim.
    for pvc in store.list_json(&pvcs(), None, None) {
        let volume = s(&pvc, "/spec/volumeName");
        if volume.is_empty() || s(&pvc, "/status/phase") != "Bound" {
            continue;
        }
        let lost = match store.get_json(&pvs(), "", volume) {
            None => true,
            Some(pv) => s(&pv, "/spec/claimRef/uid") != s(&pvc, "/metadata/uid"),
        };
        if lost {
            let (ns, name) = (s(&pvc, "/metadata/namespace"), s(&pvc, "/metadata/name"));
            let _ = store.modify_json(&pvcs(), ns, name, |p| p["status"]["phase"] = json!("Lost"));
        }
    }
}

fn tolerated(taint: &Value, tolerations: &[Value]) -> bool {
    let effect = s(taint, "/effect");
    if effect != "NoSchedule" && effect != "NoExecute" {
        return true;
    }
    tolerations.iter().any(|t| {
        let exists = s(t, "/operator") == "Exists";
        let key_ok = if s(t, "/key").is_empty() {
            exists
        } else {
            s(t, "/key") == s(taint, "/key")
        };
        let value_ok = exists || s(t, "/value") == s(taint, "/value");
        let effect_ok = s(t, "/effect").is_empty() || s(t, "/effect") == effect;
        key_ok && value_ok && effect_ok
    })
}

fn set_pod_condition(inner: &Inner, pod: &Value, status: &str, reason: &str, message: &str) {
    let (ns, name, uid) = (
        s(pod, "/metadata/namespace"),
        s(pod, "/metadata/name"),
        s(pod, "/metadata/uid"),
    );
    let _ = inner.store.modify_json(&pods(), ns, name, |p| {
        if s(p, "/metadata/uid") != uid {
            return;
        }
        let mut c = json!({"type": "PodScheduled", "status": status});
        if !reason.is_empty() {
            c["reason"] = json!(reason);
            c["message"] = json!(message);
        }
        let conds = p["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut conds: Vec<Value> = conds
            .into_iter()
            .filter(|c| c["type"] != "PodScheduled")
            .collect();
        let old = p["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "PodScheduled"))
            .cloned();
        c["lastTransitionTime"] = match old {
            Some(o)
                if o["status"] == c["status"]
                    && o["reason"] == c["reason"]
                    && o["message"] == c["message"] =>
            {
                o["lastTransitionTime"].clone()
            }
            _ => json!(now_rfc3339()),
        };
        conds.insert(0, c);
        p["status"]["conditions"] = json!(conds);
    });
}

/// Places Pending pods on nodes: node selector and affinity, taints, the node
/// affinity of bound volumes, and the selected node of WaitForFirstConsumer PVCs.
fn schedule(inner: &Inner) {
    let store = &inner.store;
    let nodes = sorted_nodes(inner);
    'pods: for pod in store.list_json(&pods(), None, None) {
        if !pod["metadata"]["deletionTimestamp"].is_null()
            || !s(&pod, "/spec/nodeName").is_empty()
            || s(&pod, "/status/phase") != "Pending"
        {
            continue;
        }
        let ns = s(&pod, "/metadata/namespace");
        let mut claims = Vec::new();
        for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            let claim = s(v, "/persistentVolumeClaim/claimName");
            if claim.is_empty() {
                continue;
            }
            match store.get_json(&pvcs(), ns, claim) {
                Some(p) if p["metadata"]["deletionTimestamp"].is_null() => claims.push(p),
                Some(_) => {
                    set_pod_condition(
                        inner,
                        &pod,
                        "False",
                        "Unschedulable",
                        &format!("persistentvolumeclaim \"{claim}\" is being deleted"),
                    );
                    continue 'pods;
                }
                None => {
                    set_pod_condition(
                        inner,
                        &pod,
                        "False",
                        "Unschedulable",
                        &format!("persistentvolumeclaim \"{claim}\" not found"),
                    );
                    continue 'pods;
                }
            }
        }
        let mut unbound_wffc = Vec::new();
        let mut bound_affinities = Vec::new();
        for c in &claims {
            let volume = s(c, "/spec/volumeName");
            if !volume.is_empty() && s(c, "/status/phase") == "Bound" {
                if let Some(pv) = store.get_json(&pvs(), "", volume) {
                    bound_affinities.push(pv["spec"]["nodeAffinity"]["required"].clone());
                }
                continue;
            }
            let class = inner.class_spec(s(c, "/spec/storageClassName"));
            match class {
                Some(cl) if cl.binding == BindingMode::WaitForFirstConsumer => {
                    unbound_wffc.push(c.clone())
                }
                _ => {
                    set_pod_condition(
                        inner,
                        &pod,
                        "False",
                        "Unschedulable",
                        "pod has unbound immediate PersistentVolumeClaims",
                    );
                    continue 'pods;
                }
            }
        }
        let selector: BTreeMap<String, String> =
            serde_json::from_value(pod["spec"]["nodeSelector"].clone()).unwrap_or_default();
        let affinity = &pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"];
        let tolerations: Vec<Value> = pod["spec"]["tolerations"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let mut chosen = None;
        for node in &nodes {
            let name = s(node, "/metadata/name");
            let labels = labels_of(node);
            let reason = if selector.iter().any(|(k, v)| labels.get(k) != Some(v))
                || (affinity.is_object() && !matches_node_selector(affinity, name, &labels))
            {
                Some("didn't match Pod's node affinity/selector".to_string())
            } else if node["spec"]["unschedulable"].as_bool() == Some(true) {
                Some("were unschedulable".to_string())
            } else if let Some(t) = node["spec"]["taints"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|t| !tolerated(t, &tolerations))
            {
                Some(format!(
                    "had untolerated taint {{{}: {}}}",
                    s(t, "/key"),
                    s(t, "/value")
                ))
            } else if bound_affinities
                .iter()
                .any(|a| a.is_object() && !matches_node_selector(a, name, &labels))
            {
                Some("had volume node affinity conflict".to_string())
            } else if unbound_wffc.iter().any(|c| {
                let sel = s(
                    c,
                    "/metadata/annotations/volume.kubernetes.io~1selected-node",
                );
                !sel.is_empty() && sel != name
            }) {
                Some("didn't find available persistent volumes to bind".to_string())
            } else {
                None
            };
            match reason {
                Some(r) => *reasons.entry(r).or_default() += 1,
                None => {
                    chosen = Some(name.to_string());
                    break;
                }
            }
        }
        let Some(node) = chosen else {
            let detail: Vec<String> = reasons
                .iter()
                .map(|(r, n)| format!("{n} node(s) {r}"))
                .collect();
            let message = format!(
                "0/{} nodes are available: {}.",
                nodes.len(),
                detail.join(", ")
            );
            set_pod_condition(inner, &pod, "False", "Unschedulable", &message);
            continue;
        };
        if !unbound_wffc.is_empty() {
            // Volumes first: the provisioner works on the selected node, the pod is
            // bound once every claim is.
            for c in &unbound_wffc {
                if s(
                    c,
                    "/metadata/annotations/volume.kubernetes.io~1selected-node",
                )
                .is_empty()
                {
                    let _ = store.modify_json(&pvcs(), ns, s(c, "/metadata/name"), |p| {
                        if !p["metadata"]["annotations"].is_object() {
                            p["metadata"]["annotations"] = json!({});
                        }
                        p["metadata"]["annotations"][SELECTED_NODE] = json!(node);
                    });
                }
            }
            continue;
        }
        let uid = s(&pod, "/metadata/uid").to_string();
        let _ = store.modify_json(&pods(), ns, s(&pod, "/metadata/name"), |p| {
            if s(p, "/metadata/uid") == uid {
                p["spec"]["nodeName"] = json!(node);
            }
        });
        set_pod_condition(inner, &pod, "True", "", "");
    }
}

fn condition_true(job: &Value, type_: &str) -> bool {
    job["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == type_ && c["status"] == "True")
}

fn elapsed_since(ts: &str) -> Option<Duration> {
    let t: jiff::Timestamp = ts.parse().ok()?;
    let d = jiff::Timestamp::now().duration_since(t);
    Duration::try_from(d).ok()
}

/// The Job controller: one pod at a time, retries up to backoffLimit, deadline,
/// conditions and counters. Not simulated: parallelism/completions > 1, indexed
/// jobs, pod failure policies, retry back-off delays, ttlSecondsAfterFinished.
fn run_jobs(inner: &Inner) {
    let store = &inner.store;
    let all_pods = store.list_json(&pods(), None, None);
    for job in store.list_json(&jobs(), None, None) {
        if !job["metadata"]["deletionTimestamp"].is_null()
            || job["spec"]["suspend"].as_bool() == Some(true)
            || condition_true(&job, "Complete")
            || condition_true(&job, "Failed")
        {
            continue;
        }
        let (ns, name, uid) = (
            s(&job, "/metadata/namespace"),
            s(&job, "/metadata/name"),
            s(&job, "/metadata/uid"),
        );
        let owned: Vec<&Value> = all_pods
            .iter()
            .filter(|p| {
                p["metadata"]["ownerReferences"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|r| r["uid"] == uid && r["controller"] == true)
            })
            .collect();
        let phase_count =
            |ph: &str| owned.iter().filter(|p| s(p, "/status/phase") == ph).count() as i64;
        let active: Vec<&&Value> = owned
            .iter()
            .filter(|p| {
                !matches!(s(p, "/status/phase"), "Succeeded" | "Failed")
                    && p["metadata"]["deletionTimestamp"].is_null()
            })
            .collect();
        let succeeded =
            phase_count("Succeeded").max(job["status"]["succeeded"].as_i64().unwrap_or(0));
        let failed = phase_count("Failed").max(job["status"]["failed"].as_i64().unwrap_or(0));
        let backoff_limit = job["spec"]["backoffLimit"].as_i64().unwrap_or(6);
        let completions = job["spec"]["completions"].as_i64().unwrap_or(1);
        let start = match s(&job, "/status/startTime") {
            "" => now_rfc3339(),
            t => t.to_string(),
        };
        let deadline_passed = job["spec"]["activeDeadlineSeconds"]
            .as_u64()
            .is_some_and(|d| elapsed_since(&start).is_some_and(|e| e >= Duration::from_secs(d)));
        let now = now_rfc3339();
        let condition = |t: &str, reason: &str, message: &str| json!({"type": t, "status": "True", "reason": reason, "message": message, "lastProbeTime": now, "lastTransitionTime": now});
        let outcome = if succeeded >= completions {
            Some((
                "Complete",
                vec![
                    condition(
                        "SuccessCriteriaMet",
                        "CompletionsReached",
                        "Reached expected number of succeeded pods",
                    ),
                    condition(
                        "Complete",
                        "CompletionsReached",
                        "Reached expected number of succeeded pods",
                    ),
                ],
            ))
        } else if failed > backoff_limit {
            Some((
                "Failed",
                vec![
                    condition(
                        "FailureTarget",
                        "BackoffLimitExceeded",
                        "Job has reached the specified backoff limit",
                    ),
                    condition(
                        "Failed",
                        "BackoffLimitExceeded",
                        "Job has reached the specified backoff limit",
                    ),
                ],
            ))
        } else if deadline_passed {
            Some((
                "Failed",
                vec![
                    condition(
                        "FailureTarget",
                        "DeadlineExceeded",
                        "Job was active longer than specified deadline",
                    ),
                    condition(
                        "Failed",
                        "DeadlineExceeded",
                        "Job was active longer than specified deadline",
                    ),
                ],
            ))
        } else {
            None
        };
        if let Some((kind, conditions)) = outcome {
            for p in &active {
                let _ = store.delete_json(
                    &pods(),
                    ns,
                    s(p, "/metadata/name"),
                    &DeleteOpts::background(),
                );
            }
            let _ = store.modify_json(&jobs(), ns, name, |j| {
                j["status"]["startTime"] = json!(start);
                j["status"]["active"] = json!(0);
                j["status"]["ready"] = json!(0);
                j["status"]["succeeded"] = json!(succeeded);
                j["status"]["failed"] = json!(failed);
                j["status"]["conditions"] = json!(conditions);
                if kind == "Complete" {
                    j["status"]["completionTime"] = json!(now);
                }
            });
            continue;
        }
        let mut active_n = active.len() as i64;
        if active.is_empty() {
            create_job_pod(inner, &job);
            active_n = 1;
        }
        let ready = active
            .iter()
            .filter(|p| s(p, "/status/phase") == "Running")
            .count();
        let _ = store.modify_json(&jobs(), ns, name, |j| {
            j["status"]["startTime"] = json!(start);
            j["status"]["active"] = json!(active_n);
            j["status"]["ready"] = json!(ready);
            j["status"]["succeeded"] = json!(succeeded);
            j["status"]["failed"] = json!(failed);
        });
    }
}

fn create_job_pod(inner: &Inner, job: &Value) {
    let (ns, name, uid) = (
        s(job, "/metadata/namespace"),
        s(job, "/metadata/name"),
        s(job, "/metadata/uid"),
    );
    let template = &job["spec"]["template"];
    let mut labels = template["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    for (k, v) in [
        ("job-name", name),
        ("batch.kubernetes.io/job-name", name),
        ("controller-uid", uid),
        ("batch.kubernetes.io/controller-uid", uid),
    ] {
        labels.insert(k.into(), json!(v));
    }
    let pod = json!({
        "metadata": {
            "name": format!("{name}-{}", random_suffix(5)),
            "labels": labels,
            "annotations": template["metadata"]["annotations"],
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": uid,
                                 "controller": true, "blockOwnerDeletion": true}],
        },
        "spec": template["spec"],
    });
    let _ = inner.store.create_json(&pods(), ns, pod);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_selector_terms() {
        let labels: BTreeMap<String, String> =
            [("kubernetes.io/hostname".to_string(), "n1".to_string())].into();
        let sel = |op: &str, v: &[&str]| json!({"nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": op, "values": v}]}]});
        assert!(matches_node_selector(
            &sel("In", &["n1", "n2"]),
            "n1",
            &labels
        ));
        assert!(!matches_node_selector(&sel("In", &["n2"]), "n1", &labels));
        assert!(matches_node_selector(&sel("NotIn", &["n2"]), "n1", &labels));
        assert!(matches_node_selector(&sel("Exists", &[]), "n1", &labels));
        let fields = json!({"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]});
        assert!(matches_node_selector(&fields, "n1", &labels));
        assert!(!matches_node_selector(&fields, "n2", &labels));
    }

    #[test]
    fn taints() {
        let taint = json!({"key": "dedicated", "value": "db", "effect": "NoSchedule"});
        assert!(!tolerated(&taint, &[]));
        assert!(tolerated(
            &taint,
            &[json!({"key": "dedicated", "operator": "Equal", "value": "db"})]
        ));
        assert!(tolerated(
            &taint,
            &[json!({"key": "dedicated", "operator": "Exists"})]
        ));
        assert!(tolerated(&taint, &[json!({"operator": "Exists"})]));
        assert!(!tolerated(
            &taint,
            &[json!({"key": "dedicated", "value": "x"})]
        ));
        assert!(tolerated(
            &json!({"key": "k", "effect": "PreferNoSchedule"}),
            &[]
        ));
    }
}
