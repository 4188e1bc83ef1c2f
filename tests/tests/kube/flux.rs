//! What Flux's own rendering (`testbed/flux`: kustomize-controller's build,
//! `postBuild.substitute` and the normalization before its apply) makes of the
//! shipped manifests, and what the real API server then stores.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use serde_json::{Value, json};
use stowage_testkit::kube as cluster;
use stowage_testkit::kube::install;

fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Flux substitutes in the YAML that kustomize re-serialized, so the quotes of the
/// source are gone: a variable that ends up empty is a YAML null, and a value that
/// reads as a number is a number. The normalization before Flux's apply turns the
/// nulls of a ConfigMap back into empty strings, but only when every value of it is
/// a string (a number makes its conversion fail, and the object goes as it is).
/// `${NAME=default}` takes the default for an empty value too; `$${` is a literal
/// `${`; objects annotated `kustomize.toolkit.fluxcd.io/substitute: disabled` are
/// left alone.
#[test]
fn flux_substitutes_in_the_rendered_yaml_and_normalizes_configmaps() {
    let root = tempfile::tempdir().unwrap();
    let k = root.path().join("k");
    std::fs::create_dir_all(&k).unwrap();
    std::fs::write(
        k.join("kustomization.yaml"),
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
         resources: [cm.yaml]\n",
    )
    .unwrap();
    std::fs::write(
        k.join("cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: strings\ndata:\n\
         \x20 set: \"${SET}\"\n  unset: \"${UNSET}\"\n  default: \"${UNSET:=17 * * * *}\"\n\
         \x20 empty-default: \"${EMPTY:=d}\"\n  empty-assign: \"${EMPTY=d}\"\n\
         \x20 unset-empty-default: \"${UNSET:=}\"\n  escaped: \"$${SET}\"\n\
         ---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: number\ndata:\n\
         \x20 n: \"${NUM}\"\n  unset: \"${UNSET:=}\"\n\
         ---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: disabled\n\
         \x20 annotations:\n    kustomize.toolkit.fluxcd.io/substitute: disabled\n\
         data:\n  x: \"${SET:=1}\"\n",
    )
    .unwrap();
    let objects = install::flux_render(
        root.path(),
        &json!({"path": "./k", "postBuild": {"substitute":
            vars(&[("SET", "x"), ("EMPTY", ""), ("NUM", "5")])}}),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let data = |name: &str| -> Value {
        objects
            .iter()
            .find(|o| o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no ConfigMap {name} in {objects:?}"))["data"]
            .clone()
    };
    assert_eq!(
        data("strings"),
        json!({"set": "x", "unset": "", "default": "17 * * * *", "empty-default": "d",
               "empty-assign": "d", "unset-empty-default": "", "escaped": "${SET}"})
    );
    assert_eq!(data("number"), json!({"n": 5, "unset": null}));
    assert_eq!(data("disabled"), json!({"x": "${SET:=1}"}));
    // The source directory is left as it was (the generator writes into a copy).
    assert_eq!(std::fs::read_dir(&k).unwrap().count(), 2);
}

/// A user who leaves `STOWAGE_PUSHGATEWAY_URL` unset and does not take the
/// `pushgateway` component: Flux renders the setting as an empty string (the build's
/// null, normalized before the apply), the real API server accepts the whole app that
/// way (a server-side dry run into its own namespace: the shared control plane keeps
/// the `stowage` install's cluster-wide objects) and stores the settings ConfigMap
/// with the empty value, which the programs read as "no metrics"
/// (`stowage_common::env`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_installs_with_the_pushgateway_url_unset() {
    let cp = cluster::shared();
    let scope = cp.scope("no-metrics");
    let client = cp.client().await;
    let installed = install::stowage(cp);
    let ns = scope.namespace(&client, &[]).await;
    let tree = install::KustomizeTree::copy();
    let components: Vec<String> = install::app_components(&tree)
        .into_iter()
        .filter(|c| c != "pushgateway" && c != "namespace")
        .collect();
    let dir = tree.kustomization(
        "no-metrics",
        &format!(
            "namespace: {ns}\n{}",
            install::app_kustomization(&components)
        ),
    );
    let mut unset = installed.vars.clone();
    unset.remove("STOWAGE_PUSHGATEWAY_URL");
    let objects = tree
        .flux_build(&dir, &unset)
        .unwrap_or_else(|e| panic!("{e}"));
    let settings = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "stowage-settings")
        .expect("the settings ConfigMap")
        .clone();
    assert_eq!(
        settings["data"]["STOWAGE_PUSHGATEWAY_URL"],
        json!(""),
        "what Flux applies: {settings:#}"
    );
    install::apply_with(cp, &objects, true).unwrap_or_else(|e| panic!("{e}"));
    install::apply(cp, std::slice::from_ref(&settings)).unwrap_or_else(|e| panic!("{e}"));
    let stored = Api::<ConfigMap>::namespaced(client, &ns)
        .get("stowage-settings")
        .await
        .expect("the settings ConfigMap is stored");
    let data = stored.data.unwrap_or_default();
    assert_eq!(
        data.get("STOWAGE_PUSHGATEWAY_URL").map(String::as_str),
        Some(""),
        "{data:?}"
    );
    let env: Vec<(String, String)> = data.into_iter().collect();
    let parsed = stowage_common::env::SchedulerConfig::from_vars(&env)
        .unwrap_or_else(|e| panic!("the scheduler refuses the stored settings: {e}"));
    assert_eq!(
        parsed.scheduler.cluster.pushgateway_url, None,
        "an empty Pushgateway URL means no metrics"
    );
}

/// What the real API server makes of the two forms Flux's substitution can leave in a
/// ConfigMap when the normalization before its apply does not run (what `flux build
/// kustomization` prints): a null value is stored as an empty string by a server-side
/// apply (kubectl's own validation refuses it before sending), and a value that became
/// a number is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_stores_a_null_setting_empty_and_refuses_a_number() {
    let cp = cluster::shared();
    let scope = cp.scope("configmap-forms");
    let client = cp.client().await;
    let ns = scope.namespace(&client, &[]).await;
    let cm = |name: &str, data: Value| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": name, "namespace": ns}, "data": data})
    };
    let api = Api::<ConfigMap>::namespaced(client.clone(), &ns);
    let ssa = kube::api::PatchParams::apply(install::FIELD_MANAGER).force();
    let stored = api
        .patch(
            "null",
            &ssa,
            &kube::api::Patch::Apply(cm("null", json!({"URL": null, "OTHER": "x"}))),
        )
        .await
        .expect("the API server applies a ConfigMap with a null value");
    assert_eq!(
        stored.data,
        Some(BTreeMap::from([
            ("OTHER".to_string(), "x".to_string()),
            ("URL".to_string(), String::new()),
        ]))
    );
    let refused = install::apply(cp, &[cm("null-kubectl", json!({"URL": null}))])
        .expect_err("kubectl validates before it sends");
    assert!(refused.contains("unknown object type \"nil\""), "{refused}");
    match api
        .patch(
            "number",
            &ssa,
            &kube::api::Patch::Apply(cm("number", json!({"N": 5}))),
        )
        .await
    {
        Err(kube::Error::Api(e)) => assert!(e.message.contains("expected string"), "{e:?}"),
        other => panic!("a number in a ConfigMap was applied: {other:?}"),
    }
}
