//! The manifests in `kustomize/` against the one source of truth in `common`: names,
//! labels, keys and environment variables; the CronJobs' safety settings; metric names
//! in alerts and the dashboard are ones the programs really push; no unencrypted Secret.
//! (Rendering and schema validation: `scripts/check-manifests.sh`.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::PodSpec;
use serde_json::Value;
use stowage_common::env::{self, GcEnv, SchedulerEnv};
use stowage_common::k8s::contract::{self, app, run_secret_keys as secret_keys_run, secret_keys};
use stowage_common::k8s::mover_job;
use stowage_common::k8s::naming::Operation;
use stowage_common::k8s::pod_security::restricted_violations;
use stowage_common::k8s::policy::Policies;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn docs_of(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn kustomization() -> Value {
    docs_of(&root().join("kustomize/app/kustomization.yaml")).remove(0)
}

/// The objects of kustomize/app (files that exist; others are another work item's).
fn app() -> Vec<Value> {
    let dir = root().join("kustomize/app");
    kustomization()["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| dir.join(f.as_str().unwrap()))
        .filter(|p| p.exists())
        .flat_map(|p| docs_of(&p))
        .collect()
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("kustomize/app has no {kind} {name}"))
}

fn cronjobs(objs: &[Value]) -> Vec<&Value> {
    objs.iter().filter(|o| o["kind"] == "CronJob").collect()
}

fn pod_spec(cj: &Value) -> &Value {
    &cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn names_and_keys_are_the_ones_common_defines() {
    let objs = app();
    let s = SchedulerEnv::default().cluster;
    let g = GcEnv::default().cluster;
    let k = kustomization();
    assert_eq!(k["namespace"], s.system_namespace.as_str());
    assert_eq!(g.system_namespace, s.system_namespace);
    let ns = docs_of(&root().join("kustomize/components/namespace/namespace.yaml"));
    find(&ns, "Namespace", &s.system_namespace);

    // The policies ConfigMap: the name and key the programs read, every policy valid.
    assert_eq!(g.policies_configmap, s.policies_configmap);
    let cm = find(&objs, "ConfigMap", &s.policies_configmap);
    let doc = cm["data"][contract::POLICIES_KEY]
        .as_str()
        .expect("policies key");
    let policies = Policies::parse(doc).unwrap();
    assert!(policies.invalid.is_empty(), "{:?}", policies.invalid);
    assert!(!policies.valid.is_empty());
    // The example's policies patch too.
    let ks = docs_of(&root().join("kustomize/examples/flux/ks.yaml"));
    for d in &ks {
        for p in d["spec"]["patches"].as_array().into_iter().flatten() {
            let patch: Value = serde_saphyr::from_str(p["patch"].as_str().unwrap()).unwrap();
            if patch["metadata"]["name"] == s.policies_configmap.as_str() {
                let ex = Policies::parse(patch["data"][contract::POLICIES_KEY].as_str().unwrap())
                    .unwrap();
                assert!(
                    ex.invalid.is_empty() && !ex.valid.is_empty(),
                    "{:?}",
                    ex.invalid
                );
            }
        }
    }

    // The example credentials Secret carries exactly the keys of the contract.
    let secret =
        docs_of(&root().join("kustomize/examples/flux/credentials/stowage-credentials.sops.yaml"))
            .remove(0);
    assert_eq!(secret["metadata"]["name"], s.credentials_secret.as_str());
    assert_eq!(secret["metadata"]["namespace"], s.system_namespace.as_str());
    let keys: BTreeSet<&str> = secret["stringData"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let expected: BTreeSet<&str> = [
        secret_keys::MASTER_PASSWORD,
        secret_keys::MOVER_ACCESS_KEY_ID,
        secret_keys::MOVER_SECRET_ACCESS_KEY,
        secret_keys::GC_ACCESS_KEY_ID,
        secret_keys::GC_SECRET_ACCESS_KEY,
    ]
    .into();
    assert_eq!(keys, expected);

    // The example PVC opts in with the label key and a shipped policy, and refers to
    // stowage's kind.
    let pvc = docs_of(&root().join("kustomize/examples/app/pvc.yaml")).remove(0);
    let policy = pvc["metadata"]["labels"][s.backup_label.as_str()]
        .as_str()
        .expect("backup label");
    assert!(policies.valid.contains_key(policy), "{policy}");
    assert_eq!(
        pvc["spec"]["dataSourceRef"]["apiGroup"],
        contract::CRD_GROUP
    );
    assert_eq!(pvc["spec"]["dataSourceRef"]["kind"], contract::CRD_KIND);

    // The CRD (prewarm's file, once it exists) is stowage's group and kind, and the
    // prewarm RBAC names its resource.
    if let Some(crd) = objs
        .iter()
        .find(|o| o["kind"] == "CustomResourceDefinition")
    {
        assert_eq!(crd["spec"]["group"], contract::CRD_GROUP);
        assert_eq!(crd["spec"]["names"]["kind"], contract::CRD_KIND);
        let plural = crd["spec"]["names"]["plural"].as_str().unwrap();
        let role = find(&objs, "ClusterRole", "stowage-prewarm");
        assert!(
            role["rules"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["apiGroups"][0] == contract::CRD_GROUP
                    && r["resources"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|x| x == plural)),
            "ClusterRole stowage-prewarm does not name {plural}.{}",
            contract::CRD_GROUP
        );
    }

    // Mover selectors (NetworkPolicy, admission policy) use the mover Jobs' labels.
    let mover = mover_job::mover_labels(Operation::Backup, "x");
    let np = docs_of(&root().join("kustomize/components/mover-network-policy/networkpolicy.yaml"))
        .remove(0);
    for (k, v) in np["spec"]["podSelector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(mover.get(k).map(String::as_str), v.as_str(), "label {k}");
    }
    let vap =
        std::fs::read_to_string(root().join("kustomize/components/admission-policy/policy.yaml"))
            .unwrap();
    for needle in [
        app::MANAGED_BY,
        app::STOWAGE,
        "stowage-mover",
        secret_keys_run::CA_CERT,
        // prewarm deletes the volumes of its storage-class probes by their claim's name.
        contract::prewarm::probe::NAME_PREFIX,
    ] {
        assert!(
            vap.contains(needle),
            "admission policy does not mention {needle}"
        );
    }
    // The service accounts by name; their namespace is wherever stowage was rendered
    // (app_and_components_render_into_another_namespace).
    for c in cronjobs(&objs) {
        let account = format!("'{}'", pod_spec(c)["serviceAccountName"].as_str().unwrap());
        assert!(
            vap.contains(&account),
            "admission policy does not cover {account}"
        );
    }
}

#[test]
fn images_are_set_in_one_place_with_the_workspace_version() {
    let k = kustomization();
    let images = k["images"].as_array().unwrap();
    let mover_repo = env::DEFAULT_MOVER_IMAGE.rsplit_once(':').unwrap().0;
    let names: BTreeSet<&str> = images.iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert!(names.contains(mover_repo), "{names:?}");
    for i in images {
        assert_eq!(i["newTag"], env!("CARGO_PKG_VERSION"), "{i}");
        assert!(
            i.get("newName").is_none(),
            "the names are the images' own: {i}"
        );
    }
    // Every image reference in the manifests is an untagged name of that list (the
    // kustomization adds the tag), STOWAGE_MOVER_IMAGE included.
    for c in cronjobs(&app()) {
        for ctr in pod_spec(c)["containers"].as_array().unwrap() {
            let img = ctr["image"].as_str().unwrap();
            assert!(names.contains(img), "{img}");
            for e in ctr["env"].as_array().into_iter().flatten() {
                if e["name"] == "STOWAGE_MOVER_IMAGE" {
                    assert_eq!(e["value"], mover_repo);
                }
            }
        }
    }
}

#[test]
fn cronjobs_are_safe_to_rerun_and_pass_pod_security_restricted() {
    let objs = app();
    let names: BTreeSet<&str> = cronjobs(&objs)
        .iter()
        .map(|c| c["metadata"]["name"].as_str().unwrap())
        .collect();
    for n in [
        "stowage-scheduler",
        "stowage-gc",
        "stowage-prewarm",
        "stowage-backup-now",
    ] {
        assert!(names.contains(n), "no CronJob {n}: {names:?}");
    }
    let accounts: BTreeSet<&str> = objs
        .iter()
        .filter(|o| o["kind"] == "ServiceAccount")
        .map(|o| o["metadata"]["name"].as_str().unwrap())
        .collect();
    for c in cronjobs(&objs) {
        let name = c["metadata"]["name"].as_str().unwrap();
        let spec = &c["spec"];
        assert_eq!(spec["concurrencyPolicy"], "Forbid", "{name}");
        assert!(spec["startingDeadlineSeconds"].as_i64().is_some(), "{name}");
        assert!(
            spec["successfulJobsHistoryLimit"].as_i64().is_some(),
            "{name}"
        );
        assert!(spec["failedJobsHistoryLimit"].as_i64().is_some(), "{name}");
        assert!(
            spec["jobTemplate"]["spec"]["activeDeadlineSeconds"]
                .as_i64()
                .is_some(),
            "{name}"
        );
        if name.ends_with("-now") || name.contains("restore") {
            assert_eq!(
                spec["suspend"], true,
                "the manual template {name} must be suspended"
            );
        }
        let pod = pod_spec(c);
        assert!(
            accounts.contains(pod["serviceAccountName"].as_str().unwrap_or_default()),
            "{name}: service account"
        );
        let typed: PodSpec = serde_json::from_value(pod.clone()).unwrap();
        assert_eq!(
            restricted_violations(&typed),
            Vec::<String>::new(),
            "{name}"
        );
        for ctr in &typed.containers {
            let sc = ctr.security_context.clone().unwrap_or_default();
            assert_eq!(sc.read_only_root_filesystem, Some(true), "{name}");
            let res = ctr.resources.clone().unwrap_or_default();
            for key in ["cpu", "memory"] {
                assert!(
                    res.requests.as_ref().is_some_and(|r| r.contains_key(key)),
                    "{name} request {key}"
                );
                assert!(
                    res.limits.as_ref().is_some_and(|r| r.contains_key(key)),
                    "{name} limit {key}"
                );
            }
        }
    }
}

#[test]
fn environment_variables_are_ones_the_programs_read() {
    let objs = app();
    let mut vars: Vec<(String, String)> = Vec::new();
    let settings = find(&objs, "ConfigMap", "stowage-settings");
    for (k, v) in settings["data"].as_object().unwrap() {
        vars.push((k.clone(), v.as_str().unwrap().to_string()));
    }
    for c in cronjobs(&objs) {
        for ctr in pod_spec(c)["containers"].as_array().unwrap() {
            for e in ctr["env"].as_array().into_iter().flatten() {
                vars.push((e["name"].as_str().unwrap().to_string(), String::new()));
            }
            for f in ctr["envFrom"].as_array().into_iter().flatten() {
                assert_eq!(f["configMapRef"]["name"], "stowage-settings");
            }
        }
    }
    env::check_unknown(vars.iter().cloned()).unwrap();
    // Outside STOWAGE_*: restic's/AWS's variables (ResticEnv) and the pod name.
    let restic: BTreeSet<String> = match serde_json::to_value(env::ResticEnv::default()).unwrap() {
        Value::Object(m) => m.keys().map(|k| k.to_ascii_uppercase()).collect(),
        _ => unreachable!(),
    };
    for (k, _) in &vars {
        assert!(
            k.starts_with(env::PREFIX) || restic.contains(k) || k == "POD_NAME",
            "{k} is read by no program"
        );
    }
}

/// Metric names of `common::metrics::names` and `prewarm_names` (parsed from its
/// source: every constant; prewarm imports `prewarm_names as names`).
fn defined_metrics() -> BTreeSet<(String, String)> {
    let src = std::fs::read_to_string(root().join("common/src/metrics.rs")).unwrap();
    let module = |name: &str| {
        src.split(&format!("pub mod {name}"))
            .nth(1)
            .unwrap()
            .split("\n}")
            .next()
            .unwrap()
            .to_string()
    };
    let modules = format!("{}\n{}", module("names"), module("prewarm_names"));
    modules
        .lines()
        .filter_map(|l| {
            let l = l.trim().strip_prefix("pub const ")?;
            let (name, rest) = l.split_once(':')?;
            let value = rest.split('"').nth(1)?;
            Some((name.trim().to_string(), value.to_string()))
        })
        .collect()
}

#[test]
fn alerts_and_dashboard_use_metrics_the_programs_push() {
    let defined = defined_metrics();
    assert!(
        defined
            .iter()
            .any(|(_, v)| v == stowage_common::metrics::names::BACKUP_LAST_SUCCESS)
    );
    // Pushed: the constant is used by a program's source.
    let mut sources = String::new();
    for krate in ["scheduler", "gc", "prewarm", "mover"] {
        let mut files = Vec::new();
        files_under(&root().join(krate).join("src"), &mut files);
        for f in files
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "rs"))
        {
            sources.push_str(&std::fs::read_to_string(f).unwrap());
        }
    }
    let pushed: BTreeSet<&str> = defined
        .iter()
        .filter(|(c, _)| sources.contains(&format!("names::{c}")))
        .map(|(_, v)| v.as_str())
        .collect();
    // kube-state-metrics series the Pushgateway-free alerts use.
    let ksm = [
        "kube_job_failed",
        "kube_job_status_active",
        "kube_job_status_start_time",
        "kube_cronjob_status_last_successful_time",
        "kube_cronjob_info",
        "kube_persistentvolumeclaim_status_phase",
    ];
    let objs = app();
    let mut exprs = Vec::new();
    let rule = find(&objs, "PrometheusRule", "stowage");
    for g in rule["spec"]["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            exprs.push((
                format!("alert {}", r["alert"]),
                r["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    let dash = find(&objs, "ConfigMap", "stowage-dashboard");
    assert_eq!(
        dash["metadata"]["annotations"]["kustomize.toolkit.fluxcd.io/substitute"],
        "disabled"
    );
    let board: Value =
        serde_json::from_str(dash["data"]["stowage.json"].as_str().unwrap()).unwrap();
    for p in board["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            exprs.push((
                format!("panel {}", p["title"]),
                t["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    let mut used_ksm = false;
    let mut problems = Vec::new();
    for (what, expr) in &exprs {
        for token in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if token.starts_with("stowage_") {
                if !pushed.contains(token) {
                    problems.push(format!("{what}: {token} is not a metric a program pushes"));
                }
            } else if token.starts_with("kube_") {
                used_ksm = true;
                if !ksm.contains(&token) {
                    problems.push(format!(
                        "{what}: {token} is not in the kube-state-metrics list"
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(used_ksm, "alerts that work without a Pushgateway");
    for alert in [
        "StowageBackupMissing",
        "StowageBackupFailed",
        "StowageRestoreStuck",
        "StowageCheckFailed",
        "StowageJobFailed",
        "StowageGcNotSucceeding",
        "StowageGcNotRunning",
        "StowageGcErrors",
        "StowageUnsafeStorageClass",
        "StowageRestoreFailing",
        "StowagePvcPendingTooLong",
    ] {
        assert!(
            exprs.iter().any(|(w, _)| w.contains(alert)),
            "no alert {alert}"
        );
    }
}

#[test]
fn no_unencrypted_secret_is_committed() {
    let mut files = Vec::new();
    files_under(&root().join("kustomize"), &mut files);
    files_under(&root().join("docs"), &mut files);
    let mut checked = 0;
    for f in files.iter().filter(|f| {
        f.extension().is_some_and(|e| e == "yaml" || e == "yml")
            && f.file_name().is_some_and(|n| n != ".sops.yaml")
    }) {
        for d in docs_of(f) {
            if d["kind"] != "Secret" {
                continue;
            }
            checked += 1;
            let name = f.display();
            assert!(
                d["sops"]["mac"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("ENC[")),
                "{name}: a Secret without SOPS metadata (encrypt it: sops --encrypt --in-place)"
            );
            for field in ["data", "stringData"] {
                for (k, v) in d[field].as_object().into_iter().flatten() {
                    assert!(
                        v.as_str().is_some_and(|v| v.starts_with("ENC[")),
                        "{name}: {field}.{k} is not encrypted"
                    );
                }
            }
            assert!(
                f.to_string_lossy().ends_with(".sops.yaml"),
                "{name}: SOPS files are named *.sops.yaml (the .sops.yaml rule)"
            );
        }
    }
    assert!(checked > 0, "the example credentials Secret is checked");
}

// ---------------------------------------------------------------------------------
// Rendered by Flux's own code (`testbed/flux`, `stowage_testkit::kube::install`):
// kustomize-controller's generator and build, `postBuild.substitute` in strict mode (a
// variable without a default that is not set fails the test instead of rendering
// empty), the normalization before its apply.

/// The objects Flux applies for a Flux Kustomization whose `spec.path` is `dir` (in a
/// [`scratch`] copy), with `spec` besides (`targetNamespace`, `components`, ...) and
/// `postBuild.substitute` set to `vars`.
fn render_flux(dir: &Path, spec: Value, vars: &BTreeMap<String, String>) -> Vec<Value> {
    let root = dir
        .ancestors()
        .find(|a| a.file_name().is_some_and(|n| n == "kustomize"))
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("{} is not in a scratch copy of kustomize/", dir.display()));
    let mut spec = spec;
    spec["path"] = Value::from(format!("./{}", dir.strip_prefix(root).unwrap().display()));
    spec["postBuild"] = serde_json::json!({"substitute": vars});
    stowage_testkit::kube::install::flux_render_strict(root, &spec)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// [`render_flux`] of `dir` with nothing else in the spec.
fn render(dir: &Path, vars: &BTreeMap<String, String>) -> Vec<Value> {
    render_flux(dir, serde_json::json!({}), vars)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        let target = to.join(e.file_name());
        if p.is_dir() {
            copy_dir(&p, &target);
        } else {
            std::fs::copy(&p, &target).unwrap();
        }
    }
}

/// A scratch copy of kustomize/ (kustomize only reads below its kustomization's
/// directory, so overlays live inside the copy).
fn scratch() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("kustomize");
    copy_dir(&root().join("kustomize"), &k);
    (dir, k)
}

fn write_kustomization(dir: &Path, k: &Value) {
    std::fs::create_dir_all(dir).unwrap();
    // JSON is YAML.
    std::fs::write(dir.join("kustomization.yaml"), k.to_string()).unwrap();
}

/// Components rendered with the app (mover-network-policy belongs in app namespaces;
/// no-monitoring only deletes).
fn app_components() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(root().join("kustomize/components"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|c| c != "mover-network-policy" && c != "no-monitoring")
        .collect();
    out.sort();
    out
}

/// The variables the example ks.yaml sets (what a user sets), plus `extra`.
fn vars(extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let ks = docs_of(&root().join("kustomize/examples/flux/ks.yaml"));
    let app = ks
        .iter()
        .find(|d| d["spec"]["path"] == "./kustomize/app")
        .unwrap();
    let mut out: BTreeMap<String, String> = app["spec"]["postBuild"]["substitute"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    for (k, v) in extra {
        out.insert(k.to_string(), v.to_string());
    }
    out
}

fn no_vars() -> BTreeMap<String, String> {
    vars(&[])
}

/// Kinds whose objects live in no namespace.
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "ClusterPolicy",
    "VolumePopulator",
];

fn all_strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::String(s) => out.push(s),
        Value::Array(a) => a.iter().for_each(|x| all_strings(x, out)),
        Value::Object(m) => m.values().for_each(|x| all_strings(x, out)),
        _ => {}
    }
}

/// `matchLabels` and `matchExpressions` values of every selector in `v`.
fn selector_labels(v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "matchLabels" {
                    for (l, val) in x.as_object().into_iter().flatten() {
                        out.push((l.clone(), val.as_str().unwrap_or_default().into()));
                    }
                } else if k == "matchExpressions" {
                    for e in x.as_array().into_iter().flatten() {
                        for val in e["values"].as_array().into_iter().flatten() {
                            out.push((
                                e["key"].as_str().unwrap_or_default().into(),
                                val.as_str().unwrap_or_default().into(),
                            ));
                        }
                    }
                } else {
                    selector_labels(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| selector_labels(x, out)),
        _ => {}
    }
}

/// Everything that would still tie the objects to the namespace `old`.
fn references_to_namespace(objs: &[Value], old: &str, new: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let needles = [
        format!("serviceaccount:{old}:"),
        format!("namespace == '{old}'"),
        format!("namespace=\"{old}\""),
        format!("namespace: {old}\n"),
    ];
    for o in objs {
        let what = format!("{} {}", o["kind"], o["metadata"]["name"]);
        let kind = o["kind"].as_str().unwrap();
        if CLUSTER_SCOPED.contains(&kind) {
            if kind == "Namespace" && o["metadata"]["name"] != new {
                problems.push(format!("{what}: Namespace is not {new}"));
            }
        } else if o["metadata"]["namespace"] != new {
            problems.push(format!(
                "{what}: metadata.namespace {}",
                o["metadata"]["namespace"]
            ));
        }
        for s in o["subjects"].as_array().into_iter().flatten() {
            if s["kind"] == "ServiceAccount" && s["namespace"] != new {
                problems.push(format!(
                    "{what}: subject {} in {}",
                    s["name"], s["namespace"]
                ));
            }
        }
        // Settings, environment values and namespace selectors that name it.
        for (k, v) in o["data"].as_object().into_iter().flatten() {
            if v == old {
                problems.push(format!("{what}: data.{k} is {old:?}"));
            }
        }
        let mut labels = Vec::new();
        selector_labels(o, &mut labels);
        for (k, v) in labels {
            if k == "kubernetes.io/metadata.name" && v == old {
                problems.push(format!("{what}: selects namespace {old}"));
            }
        }
        if kind == "CronJob" {
            for c in pod_spec(o)["containers"].as_array().unwrap() {
                let env = c["env"].as_array().cloned().unwrap_or_default();
                for e in &env {
                    if e["value"] == old {
                        problems.push(format!("{what}: env {} is {old:?}", e["name"]));
                    }
                }
                let ns = env
                    .iter()
                    .find(|e| e["name"] == "STOWAGE_SYSTEM_NAMESPACE")
                    .map(|e| e["valueFrom"]["fieldRef"]["fieldPath"].clone());
                if ns != Some(Value::from("metadata.namespace")) {
                    problems.push(format!(
                        "{what}: STOWAGE_SYSTEM_NAMESPACE is not the pod's namespace: {ns:?}"
                    ));
                }
            }
        }
        // The alert expressions are the alerts work's (prometheusrule.yaml): they still
        // select namespace="stowage" (left to that work).
        if kind == "PrometheusRule" {
            continue;
        }
        let mut strings = Vec::new();
        all_strings(o, &mut strings);
        for s in strings {
            for n in &needles {
                if s.contains(n.as_str()) {
                    problems.push(format!("{what}: {s:?} contains {n:?}"));
                }
            }
        }
    }
    problems
}

/// Flux's `targetNamespace` and a user's `namespace:` are the same kustomize namespace
/// transformer (Flux's kustomize-controller sets `namespace:` in the kustomization of
/// `spec.path` and appends `spec.components` to it); both are rendered here, with the
/// app, every component and the Namespace component.
#[test]
fn app_and_components_render_into_another_namespace() {
    let s = SchedulerEnv::default().cluster;
    let new = "backup-system";
    let comps = app_components();
    for c in [
        "namespace",
        "admission-policy",
        "kyverno",
        "consistency",
        "custom-ca",
    ] {
        assert!(comps.iter().any(|x| x == c), "component {c}");
    }

    // The default still is stowage's own namespace, RBAC subjects included.
    let (_tmp, k) = scratch();
    let objs = render(&k.join("app"), &no_vars());
    let subjects: Vec<&Value> = objs
        .iter()
        .flat_map(|o| o["subjects"].as_array().into_iter().flatten())
        .collect();
    assert!(!subjects.is_empty());
    for sub in subjects {
        assert_eq!(sub["namespace"], s.system_namespace.as_str(), "{sub}");
    }

    // A user's kustomization with `namespace:`.
    let overlay = k.join("overlay");
    write_kustomization(
        &overlay,
        &serde_json::json!({
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "namespace": new,
            "resources": ["../app"],
            "components": comps.iter().map(|c| format!("../components/{c}")).collect::<Vec<_>>(),
        }),
    );
    let user = render(&overlay, &no_vars());
    let problems = references_to_namespace(&user, &s.system_namespace, new);
    assert!(
        problems.is_empty(),
        "namespace: {new}\n{}",
        problems.join("\n")
    );

    // Flux: path ./kustomize/app, targetNamespace, spec.components (Flux's generator
    // writes them into the kustomization).
    let targeted = render_flux(
        &k.join("app"),
        serde_json::json!({
            "targetNamespace": new,
            "components": comps.iter().map(|c| format!("../components/{c}")).collect::<Vec<_>>(),
        }),
        &no_vars(),
    );
    let problems = references_to_namespace(&targeted, &s.system_namespace, new);
    assert!(
        problems.is_empty(),
        "targetNamespace: {new}\n{}",
        problems.join("\n")
    );
    assert_eq!(user.len(), targeted.len());
    // The admission policy names the service accounts of the CronJobs it must narrow.
    let vap = targeted
        .iter()
        .find(|o| o["kind"] == "ValidatingAdmissionPolicy")
        .unwrap();
    let text = vap.to_string();
    for c in cronjobs(&targeted) {
        let sa = pod_spec(c)["serviceAccountName"].as_str().unwrap();
        assert!(text.contains(&format!("'{sa}'")), "{sa}");
    }
}

#[test]
fn the_namespace_object_is_a_component() {
    let s = SchedulerEnv::default().cluster;
    let (_tmp, k) = scratch();
    let base = render(&k.join("app"), &no_vars());
    assert!(
        !base.iter().any(|o| o["kind"] == "Namespace"),
        "kustomize/app renders a Namespace: repositories that manage namespaces get a second owner"
    );
    let dir = k.join("with-namespace");
    write_kustomization(
        &dir,
        &serde_json::json!({
            "resources": ["../app"],
            "components": ["../components/namespace"],
        }),
    );
    let objs = render(&dir, &no_vars());
    let ns = find(&objs, "Namespace", &s.system_namespace);
    // Zero-touch restore movers run there as root with a few capabilities.
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "baseline"
    );
    // The example Flux Kustomization keeps creating it.
    let ks = docs_of(&root().join("kustomize/examples/flux/ks.yaml"));
    let app = ks
        .iter()
        .find(|d| d["spec"]["path"] == "./kustomize/app")
        .unwrap();
    assert!(
        app["spec"]["components"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "../components/namespace"),
        "the example ks.yaml lists ../components/namespace"
    );
}

/// The label key of `STOWAGE_BACKUP_LABEL`, set the way docs/install-flux.md says
/// (postBuild.substitute), reaches both the programs' settings and the Kyverno policy.
#[test]
fn kyverno_policy_follows_the_configured_label_key() {
    let (_tmp, k) = scratch();
    let dir = k.join("with-kyverno");
    write_kustomization(
        &dir,
        &serde_json::json!({"resources": ["../app"], "components": ["../components/kyverno"]}),
    );
    for key in [
        SchedulerEnv::default().cluster.backup_label.as_str(),
        "example.org/backup-policy",
    ] {
        let objs = render(&dir, &vars(&[("STOWAGE_BACKUP_LABEL", key)]));
        let settings = find(&objs, "ConfigMap", "stowage-settings");
        assert_eq!(settings["data"]["STOWAGE_BACKUP_LABEL"], key);
        let policy = objs.iter().find(|o| o["kind"] == "ClusterPolicy").unwrap();
        let rule = &policy["spec"]["rules"][0];
        let matches = rule["match"]["any"].as_array().unwrap();
        let (mut pvc, mut ns) = (false, false);
        for m in matches {
            for (sel, seen) in [("selector", &mut pvc), ("namespaceSelector", &mut ns)] {
                for e in m["resources"][sel]["matchExpressions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    assert_eq!(e["key"], key, "{sel}: {e}");
                    if e["operator"] == "Exists" {
                        *seen = true;
                    }
                    if e["operator"] == "NotIn" {
                        for v in contract::OPT_OUT_VALUES {
                            assert!(e["values"].as_array().unwrap().iter().any(|x| x == v));
                        }
                    }
                }
            }
        }
        assert!(pvc && ns, "the PVC's label and its namespace's opt in");
        let pre = rule["preconditions"]["all"].to_string();
        assert!(
            pre.contains(&format!("labels.\\\"{key}\\\"")),
            "the opt-out precondition reads label {key}: {pre}"
        );
        let all = policy.to_string();
        assert!(!all.contains("labels.backup"), "{all}");
    }
}

/// The custom-ca component gives every CronJob the bundle where the programs read it
/// (they copy it into their movers' per-run Secrets, mover_job.rs).
#[test]
fn custom_ca_reaches_every_cronjob() {
    let (_tmp, k) = scratch();
    let dir = k.join("with-ca");
    write_kustomization(
        &dir,
        &serde_json::json!({"resources": ["../app"], "components": ["../components/custom-ca"]}),
    );
    let objs = render(&dir, &vars(&[("STOWAGE_CA_CONFIGMAP", "internal-ca")]));
    let file = format!("{}/{}", contract::MOVER_CA_DIR, secret_keys_run::CA_CERT);
    let cjs = cronjobs(&objs);
    assert_eq!(cjs.len(), cronjobs(&app()).len());
    for c in cjs {
        let name = &c["metadata"]["name"];
        let pod = pod_spec(c);
        let ctr = &pod["containers"][0];
        let env: Vec<(String, String)> = ctr["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap().to_string(),
                    e["value"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        assert!(
            env.contains(&("STOWAGE_CA_BUNDLE".into(), file.clone())),
            "{name}"
        );
        env::check_unknown(env.iter().cloned()).unwrap();
        let mount = ctr["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == contract::MOVER_CA_DIR)
            .unwrap_or_else(|| panic!("{name}: nothing mounted at the CA path"));
        let vol = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        assert_eq!(vol["configMap"]["name"], "internal-ca", "{name}");
        assert_eq!(
            vol["configMap"]["items"][0]["key"],
            secret_keys_run::CA_CERT
        );
        assert_eq!(
            vol["configMap"]["items"][0]["path"],
            secret_keys_run::CA_CERT
        );
    }
}
