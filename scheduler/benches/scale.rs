//! How a scheduler pass grows with the cluster: 100 and 1,000 opted-in PVCs (10 per
//! namespace, each with an app pod) in the fake API; the real `stowage-scheduler`
//! binary runs one pass. Prints wall time, API requests and the scheduler's peak
//! memory (GNU time). Run: `cargo bench -p stowage-scheduler --bench scale`.

use std::process::Command;
use std::time::Instant;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolumeClaim, Pod, Secret};
use serde_json::json;
use stowage_testkit::fakeapi::FakeApi;

const USER: &str = "system:serviceaccount:stowage:stowage-scheduler";

fn put<K>(api: &FakeApi, v: serde_json::Value)
where
    K: k8s_openapi::Resource + serde::Serialize + serde::de::DeserializeOwned,
{
    let o: K = serde_json::from_value(v).unwrap();
    api.store().create(&o).unwrap();
}

fn world(pvcs: usize) -> FakeApi {
    let api = FakeApi::start();
    put::<Namespace>(&api, json!({"metadata": {"name": "stowage"}}));
    put::<ConfigMap>(
        &api,
        json!({"metadata": {"name": "stowage-policies", "namespace": "stowage"},
               "data": {"policies.yaml": "hourly: {schedule: \"@hourly\"}\n"}}),
    );
    put::<Secret>(
        &api,
        json!({"metadata": {"name": "stowage-credentials", "namespace": "stowage"},
               "stringData": {"master-password": "m", "mover-access-key-id": "a",
                              "mover-secret-access-key": "s"}}),
    );
    for i in 0..pvcs {
        let ns = format!("ns-{:03}", i / 10);
        if i % 10 == 0 {
            put::<Namespace>(&api, json!({"metadata": {"name": ns}}));
        }
        let name = format!("data-{i}");
        put::<PersistentVolumeClaim>(
            &api,
            json!({"metadata": {"name": name, "namespace": ns, "labels": {"backup": "hourly"},
                                "annotations": {"stowage.io/last-attempt": "2026-11-23T09:30:00Z"}},
                   "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
        );
        api.store()
            .modify::<PersistentVolumeClaim>(&ns, &name, |p| {
                p.status = Some(serde_json::from_value(json!({"phase": "Bound"})).unwrap());
            })
            .unwrap();
        put::<Pod>(
            &api,
            json!({"metadata": {"name": format!("app-{i}"), "namespace": ns},
                   "spec": {"nodeName": "node-a", "securityContext": {"runAsUser": 1000},
                            "containers": [{"name": "app", "image": "app",
                                            "volumeMounts": [{"name": "d", "mountPath": "/d"}]}],
                            "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": name}}]}}),
        );
    }
    api
}

fn main() {
    let bin = stowage_testkit::bins::path("stowage-scheduler");
    println!(
        "| PVCs | namespaces | pass | wall (s) | API requests | scheduler peak RSS (MiB) | Jobs started |"
    );
    println!("| ---: | ---: | --- | ---: | ---: | ---: | ---: |");
    for n in [100, 1000] {
        let api = world(n);
        for (label, now, max) in [
            ("all due", "2026-11-23T10:00:30Z", "100000"),
            ("none due", "2026-11-23T10:10:00Z", "100000"),
        ] {
            api.clear_requests();
            let t = Instant::now();
            let out = Command::new("/usr/bin/time")
                .args(["-f", "%M"])
                .arg(&bin)
                .args(["--now", now])
                .env_clear()
                .env("KUBECONFIG", api.kubeconfig_for(USER))
                .env("STOWAGE_REPOSITORY_BASE", "s3:https://s3.lan/b")
                .env("STOWAGE_MAX_CONCURRENT_JOBS", max)
                .env("STOWAGE_LOG", "warn")
                .output()
                .expect("GNU time (apt-get install time)");
            let wall = t.elapsed().as_secs_f64();
            let stderr = String::from_utf8_lossy(&out.stderr);
            let rss_kib: f64 = stderr
                .lines()
                .last()
                .and_then(|l| l.trim().parse().ok())
                .unwrap_or(0.0);
            let requests = api.requests();
            let started = requests
                .iter()
                .filter(|r| r.verb == "create" && r.resource == "jobs")
                .count();
            assert!(out.status.success(), "{stderr}");
            println!(
                "| {n} | {} | {label} | {wall:.2} | {} | {:.1} | {started} |",
                n / 10,
                requests.len(),
                rss_kib / 1024.0
            );
        }
    }
}
