//! When gc last pruned and checked each repository, what the last check found, and when
//! a pass last succeeded: a small JSON document and a timestamp in a ConfigMap of the
//! stowage namespace (a read and a write per pass). Lost or damaged state only makes
//! work due early; it never loses data.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde::{Deserialize, Serialize};
use serde_json::json;
use stowage_common::k8s::contract::{GC_LAST_SUCCESS_KEY, GC_STATE_KEY};
use stowage_common::k8s::describe_kube_error;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RepoState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_prune: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check: Option<Timestamp>,
    /// Checks done (rotates the read-data subset).
    #[serde(default)]
    pub checks: u32,
    /// The last check measured unused data over the threshold: prune next pass.
    #[serde(default)]
    pub prune_wanted: bool,
    /// What the last check found wrong (`None`: clean). A damaged repository is checked
    /// again at every pass and never pruned until a check finds it clean.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub damaged: Option<String>,
    /// Hash of the snapshot file names after retention was last applied in full (no
    /// lock in the way). The same listing and rules again: nothing to forget, the
    /// repository need not be opened (`triage`). `None`: open it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listing: Option<String>,
    /// Fingerprint of the retention rules applied then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<String>,
    /// When retention forgets more without a new snapshot (the manual-backup TTL,
    /// which counts from now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recheck_at: Option<Timestamp>,
    /// When the repository was last opened and maintained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visited: Option<Timestamp>,
    /// Snapshots and bytes then: the metrics of a pass that does not open it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Retention is held back (it would forget this many snapshots at once, more than
    /// the set share): the metric of a pass that does not open it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_blocked: Option<usize>,
    /// The last confirmation (`stowage.io/confirm-forget` / `--confirm-forget`) a pass
    /// used to forget more than the set share: it does not confirm a later hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forget_confirmed: Option<String>,
}

/// By repository identity.
pub type GcState = BTreeMap<String, RepoState>;

/// Everything the ConfigMap holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stored {
    pub repos: GcState,
    /// End of the last pass without errors.
    pub last_success: Option<Timestamp>,
}

pub async fn load(client: &Client, ns: &str, name: &str) -> Result<Stored, String> {
    let api = Api::<ConfigMap>::namespaced(client.clone(), ns);
    let cm = api
        .get_opt(name)
        .await
        .map_err(|e| describe_kube_error(&e, &format!("get configmap {ns}/{name}")))?;
    let data = cm.and_then(|c| c.data).unwrap_or_default();
    let last_success = data
        .get(GC_LAST_SUCCESS_KEY)
        .and_then(|v| v.parse::<Timestamp>().ok());
    let Some(doc) = data.get(GC_STATE_KEY) else {
        return Ok(Stored {
            repos: GcState::new(),
            last_success,
        });
    };
    let repos = serde_json::from_str(doc).unwrap_or_else(|e| {
        tracing::warn!("gc state in ConfigMap {ns}/{name} is unreadable ({e}); starting afresh");
        GcState::new()
    });
    Ok(Stored {
        repos,
        last_success,
    })
}

pub async fn save(client: &Client, ns: &str, name: &str, state: &Stored) -> Result<(), String> {
    let api = Api::<ConfigMap>::namespaced(client.clone(), ns);
    let doc = serde_json::to_string(&state.repos).expect("state serializes");
    let mut data = serde_json::Map::new();
    data.insert(GC_STATE_KEY.into(), json!(doc));
    if let Some(t) = state.last_success {
        data.insert(GC_LAST_SUCCESS_KEY.into(), json!(t.to_string()));
    }
    let cm = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns,
                     "labels": {"app.kubernetes.io/managed-by": "stowage",
                                "app.kubernetes.io/part-of": "stowage"}},
        "data": data,
    });
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&cm))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if stowage_common::k8s::is_status(&e, 404) => {
            let obj: ConfigMap = serde_json::from_value(cm).expect("valid ConfigMap");
            api.create(&PostParams::default(), &obj)
                .await
                .map(|_| ())
                .map_err(|e| describe_kube_error(&e, &format!("create configmap {ns}/{name}")))
        }
        Err(e) => Err(describe_kube_error(
            &e,
            &format!("write configmap {ns}/{name}"),
        )),
    }
}
