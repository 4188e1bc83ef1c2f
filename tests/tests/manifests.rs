//! The manifests in `kustomize/` against the one source of truth in `common`: names,
//! labels, keys and environment variables; the CronJobs' safety settings; metric names
//! in alerts and the dashboard are ones the programs really push; no unencrypted Secret.
//! (Rendering and schema validation: `scripts/check-manifests.sh`.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::PodSpec;
use serde_json::Value;
use stowage_common::env::{self, GcEnv, SchedulerEnv};
use stowage_common::k8s::contract::{self, app, secret_keys};
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
    let s = SchedulerEnv::default();
    let g = GcEnv::default();
    let k = kustomization();
    assert_eq!(k["namespace"], s.system_namespace.as_str());
    assert_eq!(g.system_namespace, s.system_namespace);
    find(&objs, "Namespace", &s.system_namespace);

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
        &s.system_namespace,
    ] {
        assert!(
            vap.contains(needle),
            "admission policy does not mention {needle}"
        );
    }
    for c in cronjobs(&objs) {
        let user = format!(
            "system:serviceaccount:{}:{}",
            s.system_namespace,
            pod_spec(c)["serviceAccountName"].as_str().unwrap()
        );
        assert!(
            vap.contains(&user),
            "admission policy does not cover {user}"
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
