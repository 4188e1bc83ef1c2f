//! The demo on a real Kubernetes control plane (`stowage_testkit::kube`): etcd,
//! kube-apiserver, kube-controller-manager and kube-scheduler of the test bed, nodes
//! served by the process kubelet, node-local storage, stowage installed from
//! `kustomize/` as Flux installs it, Garage on loopback as the S3 storage. Every
//! program runs as a Job created with `kubectl create job --from=cronjob/...`, as its
//! ServiceAccount. Run by `scripts/demo.sh` when the control plane is built.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use stowage_common::k8s::contract::{prewarm as pc, status};
use stowage_testkit::kube::populate::{Env, fill, running};
use stowage_testkit::kube::{LOCAL_CLASS, install};
use stowage_testkit::sim::digest;

use super::{APPS, say, short};

/// The annotation `key` of PVC `ns/pvc` (empty if none).
async fn ann(env: &Env, ns: &str, pvc: &str, key: &str) -> String {
    env.ann(ns, pvc, key).await.unwrap_or_default()
}

/// Applies what Git holds: the apps' namespaces, PVCs (restore from backup, hourly
/// backups) and pods.
async fn apply_git(env: &Env) {
    let mut seen = Vec::new();
    for (ns, pvc, node) in APPS {
        if !seen.contains(&ns) {
            env.namespace(ns, &[]).await;
            seen.push(ns);
        }
        env.apply_app(ns, pvc, LOCAL_CLASS, pvc, node).await;
    }
}

fn namespaces() -> Vec<&'static str> {
    let mut v: Vec<&str> = APPS.iter().map(|(ns, _, _)| *ns).collect();
    v.dedup();
    v
}

/// The pods of the apps that are not Running.
async fn waiting_apps(env: &Env) -> Vec<String> {
    let mut out = Vec::new();
    for ns in namespaces() {
        let pods = Api::<Pod>::namespaced(env.client().await, ns)
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        for p in pods {
            if p.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Running") {
                out.push(format!("{ns}/{}", p.metadata.name.unwrap_or_default()));
            }
        }
    }
    out
}

pub async fn run() -> Result<bool, String> {
    let bucket = stowage_testkit::garage::shared().bucket("demo");
    let options = install::Options {
        bucket: Some(bucket.clone()),
        ..install::Options::default()
    };
    say("stowage demo: zero-touch restore after a cluster rebuild, on a real control plane");
    say(
        "  starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler (Kubernetes \
         v1.36.3, built by scripts/build-kube.sh), nodes node-a and node-b, node-local storage \
         class `local` (WaitForFirstConsumer); stowage installed from kustomize/ as Flux \
         installs it",
    );
    let env = Env::new(&options);
    say(format!(
        "  backups: restic repositories in bucket {bucket} of a Garage S3 server on loopback\n"
    ));
    let keys: Vec<(&str, &str)> = APPS.iter().map(|(n, p, _)| (*n, *p)).collect();

    say(
        "1. Fresh install: Git applies 3 PVCs (dataSourceRef → stowage.io/Restore) and their apps; \
         prewarm runs (kubectl create job --from=cronjob/stowage-prewarm)",
    );
    apply_git(&env).await;
    env.populate(&keys).await;
    for (ns, pvc, _) in APPS {
        say(format!(
            "   {ns}/{pvc}: no backup exists → bound empty ({})",
            ann(&env, ns, pvc, pc::status::BOUND_EMPTY).await
        ));
    }

    say(
        "\n2. The apps write their data; the scheduler backs every volume up (kubectl create \
         job --from=cronjob/stowage-scheduler, twice: start, then record)",
    );
    for (i, (ns, pvc, _)) in APPS.iter().enumerate() {
        fill(&env.dir(ns, pvc).await, i as u64 + 1);
    }
    env.backup(&namespaces()).await;
    let mut before = BTreeMap::new();
    for (ns, pvc, _) in APPS {
        let result = ann(&env, ns, pvc, status::LAST_RESULT).await;
        if result != "Succeeded" {
            return Err(format!(
                "backup of {ns}/{pvc}: {result}\n{}",
                env.logs(&namespaces())
            ));
        }
        let dir = env.dir(ns, pvc).await;
        let sum = digest::tree(&dir);
        say(format!(
            "   {ns}/{pvc}: backed up as snapshot {} ({} entries, checksum {})",
            short(&ann(&env, ns, pvc, status::LAST_SNAPSHOT).await),
            digest::entries(&dir).len(),
            short(&sum)
        ));
        before.insert((ns, pvc), sum);
    }

    say(
        "\n3. The cluster is destroyed: its control plane stops, with etcd, the nodes and \
         their volumes; the backups stay in S3",
    );
    env.c.cp.stop();

    say(
        "\n4. A new cluster is built (a new etcd) and Git is applied again: stowage, the same \
         PVCs and apps",
    );
    let env = Env::new(&options);
    apply_git(&env).await;
    let first = env.run("stowage-scheduler").await;
    if !first.ok() {
        return Err(format!("the scheduler failed:\n{}", first.log));
    }
    let mut backups = 0;
    for ns in namespaces() {
        backups += env.backup_jobs(ns).await.len();
    }
    say(format!(
        "   the scheduler ran first: {backups} backups started (PVCs being restored are never \
         backed up, so an empty volume can never become the newest backup)"
    ));
    say(format!(
        "   apps waiting for their volumes (Pending): {}",
        waiting_apps(&env).await.join(", ")
    ));
    env.populate(&keys).await;

    say("\n5. Restored before any app could start:");
    let mut all_equal = true;
    for (ns, pvc, _) in APPS {
        let sum = digest::tree(&env.dir(ns, pvc).await);
        let equal = before[&(ns, pvc)] == sum;
        all_equal &= equal;
        say(format!(
            "   {ns}/{pvc}: restored snapshot {} → checksum {} {}",
            short(&ann(&env, ns, pvc, status::POPULATED_FROM).await),
            short(&sum),
            if equal {
                "= before the rebuild ✓"
            } else {
                "≠ before the rebuild ✗"
            }
        ));
    }
    let pods: Vec<(&str, String)> = APPS
        .iter()
        .map(|(ns, pvc, _)| (*ns, format!("app-{pvc}")))
        .collect();
    running(&env, &pods).await;
    say("   apps running, on the nodes that hold their restored volumes");

    say("\n6. Backups continue the history after the restore");
    env.backup(&namespaces()).await;
    for (ns, pvc, _) in APPS {
        say(format!(
            "   {ns}/{pvc}: {} (snapshot {}, {} snapshots in the repository)",
            ann(&env, ns, pvc, status::LAST_RESULT).await,
            short(&ann(&env, ns, pvc, status::LAST_SNAPSHOT).await),
            env.snapshots(ns, pvc).len()
        ));
    }
    say(if all_equal {
        "\nEvery volume came back identical (content, modes, owners, times, links)."
    } else {
        "\nSOME VOLUMES DIFFER: this is a bug, please report it."
    });
    Ok(all_equal)
}
