//! When gc last pruned and checked each repository: one small JSON document in a
//! ConfigMap of the stowage namespace (a read and a write per pass). Lost or damaged
//! state only makes work due early; it never loses data.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde::{Deserialize, Serialize};
use serde_json::json;
use stowage_common::k8s::contract::GC_STATE_KEY;
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
}

/// By repository identity.
pub type GcState = BTreeMap<String, RepoState>;

pub async fn load(client: &Client, ns: &str, name: &str) -> Result<GcState, String> {
    let api = Api::<ConfigMap>::namespaced(client.clone(), ns);
    let cm = api
        .get_opt(name)
        .await
        .map_err(|e| describe_kube_error(&e, &format!("get configmap {ns}/{name}")))?;
    let Some(doc) = cm
        .and_then(|c| c.data)
        .and_then(|d| d.get(GC_STATE_KEY).cloned())
    else {
        return Ok(GcState::new());
    };
    Ok(serde_json::from_str(&doc).unwrap_or_else(|e| {
        tracing::warn!("gc state in ConfigMap {ns}/{name} is unreadable ({e}); starting afresh");
        GcState::new()
    }))
}

pub async fn save(client: &Client, ns: &str, name: &str, state: &GcState) -> Result<(), String> {
    let api = Api::<ConfigMap>::namespaced(client.clone(), ns);
    let doc = serde_json::to_string(state).expect("state serializes");
    let cm = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns,
                     "labels": {"app.kubernetes.io/managed-by": "stowage",
                                "app.kubernetes.io/part-of": "stowage"}},
        "data": {GC_STATE_KEY: doc},
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
