//! Scenarios on a real Kubernetes control plane (`stowage_testkit::kube`): etcd,
//! kube-apiserver, kube-controller-manager and kube-scheduler built from Kubernetes'
//! Go modules by `scripts/build-kube.sh`. These tests fail, never skip, when the
//! binary cannot be had.

mod operations;
mod populate;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, PostParams};
use serde_json::json;
use stowage_testkit::kube as cluster;
use stowage_testkit::kube::install;
use stowage_testkit::kube::scenario::{
    app_volume, finished_job, first_with_labels, job_has, restricted_pod_spec,
};

mod flux;
mod rbac;

/// The control plane's own controllers act: a Job created through the API server gets
/// its Pod from the real Job controller, with the ServiceAccount admission plugin's
/// token volume, in a namespace that enforces Pod Security `restricted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_controller_creates_the_pod_of_a_job() {
    let cp = cluster::shared();
    let scope = cp.scope("job");
    let client = cp.client().await;
    let ns = scope
        .namespace(
            &client,
            &[("pod-security.kubernetes.io/enforce", "restricted")],
        )
        .await;
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": "hello"},
        "spec": {"backoffLimit": 0, "template": {"spec": restricted_pod_spec()}},
    }))
    .unwrap();
    let created = Api::<Job>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &job)
        .await
        .expect("create job");
    let pod = first_with_labels(
        Api::<Pod>::namespaced(client.clone(), &ns),
        "batch.kubernetes.io/job-name=hello",
        "pod of job hello",
    )
    .await;
    let owner = &pod.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), Some(&owner.uid)),
        ("Job", created.metadata.uid.as_ref())
    );
    let spec = pod.spec.expect("spec");
    assert_eq!(spec.service_account_name.as_deref(), Some("default"));
    let volumes = spec.volumes.unwrap_or_default();
    assert!(
        volumes
            .iter()
            .any(|v| v.name.starts_with("kube-api-access-") && v.projected.is_some()),
        "the ServiceAccount admission plugin adds the token volume: {volumes:?}"
    );
}

/// The API server enforces what the harness claims: RBAC (a user without a binding
/// is refused with 403) and Pod Security (a pod without the `restricted` settings is
/// refused in a `restricted` namespace).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_enforces_rbac_and_pod_security() {
    let cp = cluster::shared();
    let scope = cp.scope("enforce");
    let client = cp.client().await;
    let ns = scope
        .namespace(
            &client,
            &[("pod-security.kubernetes.io/enforce", "restricted")],
        )
        .await;

    let nobody = cluster::client_from(&cp.kubeconfig_for("nobody", &[])).await;
    match Api::<Pod>::namespaced(nobody, &ns)
        .list(&Default::default())
        .await
    {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "{e:?}"),
        other => panic!("a user without RBAC rights listed pods: {other:?}"),
    }

    // No securityContext at all: `baseline` would admit it, `restricted` does not.
    let unrestricted: Pod = serde_json::from_value(json!({
        "metadata": {"name": "unrestricted"},
        "spec": {"containers": [{"name": "main", "image": "example.invalid/noop:1"}]},
    }))
    .unwrap();
    match Api::<Pod>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &unrestricted)
        .await
    {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 403, "{e:?}");
            assert!(e.message.contains("violates PodSecurity"), "{e:?}");
        }
        other => panic!("an unrestricted pod was admitted in a restricted namespace: {other:?}"),
    }
    let admitted: Pod = serde_json::from_value(json!({
        "metadata": {"name": "restricted"}, "spec": restricted_pod_spec(),
    }))
    .unwrap();
    Api::<Pod>::namespaced(client, &ns)
        .create(&PostParams::default(), &admitted)
        .await
        .expect("a restricted pod is admitted");
}

/// `kind/name` of every object `kubectl get` finds of `objects` (one per line).
fn existing(cp: &cluster::ControlPlane, objects: &[serde_json::Value]) -> Vec<String> {
    let list =
        serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "List", "items": objects})).unwrap();
    let out = install::kubectl(cp, &["get", "-f", "-", "-o", "name"], Some(&list));
    assert!(
        out.status.success(),
        "kubectl get: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

/// The shipped app with every component (but the app-namespace one), rendered as Flux
/// renders it with `postBuild.substitute`, is accepted object by object by a real API
/// server: the Restore CRD, the RBAC, the CronJobs, the ValidatingAdmissionPolicy
/// (whose CEL also type-checks without warnings), the VolumePopulator, the
/// PrometheusRule and the Kyverno policy against their projects' CRDs, the
/// NetworkPolicies. The mover NetworkPolicy component goes into an app's namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_with_every_component_installs_on_a_real_api_server() {
    let cp = cluster::shared();
    let scope = cp.scope("install");
    let client = cp.client().await;
    let installed = install::stowage(cp);
    let objects = &installed.objects;
    let found = existing(cp, objects);
    assert_eq!(
        found.len(),
        objects.len(),
        "every rendered object exists: rendered {:?}, found {found:?}",
        objects.iter().map(install::describe).collect::<Vec<_>>()
    );
    let kinds: std::collections::BTreeSet<&str> =
        objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    for kind in [
        "CustomResourceDefinition",
        "ClusterRole",
        "RoleBinding",
        "CronJob",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "VolumePopulator",
        "PrometheusRule",
        "ClusterPolicy",
        "NetworkPolicy",
    ] {
        assert!(
            kinds.contains(kind),
            "the rendering has a {kind}: {kinds:?}"
        );
    }
    let tree = install::KustomizeTree::copy();

    // The API server type-checks the policy's CEL against the schemas of the kinds it
    // matches; it reports what does not check as warnings in the status.
    use k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy;
    for vap in objects
        .iter()
        .filter(|o| o["kind"] == "ValidatingAdmissionPolicy")
    {
        let name = vap["metadata"]["name"].as_str().unwrap();
        let api = Api::<ValidatingAdmissionPolicy>::all(client.clone());
        let checked = kube::runtime::wait::await_condition(
            api,
            name,
            |p: Option<&ValidatingAdmissionPolicy>| {
                p.is_some_and(|p| {
                    p.status.as_ref().and_then(|s| s.observed_generation) == p.metadata.generation
                })
            },
        );
        let policy = tokio::time::timeout(cluster::WAIT, checked)
            .await
            .expect("the policy's type checking")
            .expect("watch")
            .expect("policy");
        let warnings = policy
            .status
            .and_then(|s| s.type_checking)
            .and_then(|t| t.expression_warnings)
            .unwrap_or_default();
        assert!(
            warnings.is_empty(),
            "ValidatingAdmissionPolicy {name}: the API server's type checking warns: {warnings:#?}"
        );
    }

    // The mover NetworkPolicy component, in an app's namespace.
    let app_ns = scope.namespace(&client, &[]).await;
    let dir = tree.kustomization(
        "mover-network-policy",
        &format!("namespace: {app_ns}\ncomponents: [../../components/mover-network-policy]\n"),
    );
    let objects = tree
        .flux_build(&dir, &installed.vars)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!objects.is_empty());
    install::apply(cp, &objects).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(existing(cp, &objects).len(), objects.len());
}

/// The app rendered into another namespace, as Flux's `targetNamespace` renders it (a
/// kustomization with `namespace: other`): every binding names the ServiceAccounts of
/// that namespace, and the API server accepts every object there (checked with a
/// server-side dry run: the shared control plane keeps the `stowage` install).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_rendered_into_another_namespace_binds_its_own_service_accounts() {
    let cp = cluster::shared();
    let _scope = cp.scope("target-namespace");
    let installed = install::stowage(cp);
    let tree = install::KustomizeTree::copy();
    let dir = tree.kustomization(
        "other",
        &format!(
            "namespace: stowage-other\n{}",
            install::app_kustomization(&install::app_components(&tree))
        ),
    );
    let objects = tree
        .flux_build(&dir, &installed.vars)
        .unwrap_or_else(|e| panic!("{e}"));
    let dangling = install::dangling_subjects(&objects);
    assert!(
        dangling.is_empty(),
        "rendered into namespace stowage-other, bindings still name ServiceAccounts elsewhere:\n{}",
        dangling.join("\n")
    );
    install::apply_with(cp, &objects, true).unwrap_or_else(|e| panic!("{e}"));
}

/// The product's backup mover Job (`stowage_common::k8s::mover_job`) on the real
/// control plane: the real scheduler places its pod with the WaitForFirstConsumer
/// claim (the node-local provisioner and the real PV binder bind it), the process
/// kubelet runs the real `stowage-mover` with the volume at the pod path `/data`
/// (the run's directories are under /tmp: no host path collides with a pod path), the
/// mover backs the files up into Garage, its result line is the pod's termination
/// message and the Job controller marks the Job complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mover_job_backs_up_a_node_local_volume_into_garage() {
    use k8s_openapi::api::core::v1::Secret;
    use stowage_common::k8s::mover_job::{MoverJobSpec, Placement, mover_job};
    use stowage_common::k8s::naming::Operation;
    use stowage_common::result::RunResult;

    let c = cluster::cluster();
    let cp = c.cp;
    let scope = cp.scope("mover");
    let client = cp.client().await;
    let ns = scope.namespace(&client, &[]).await;
    let (pvc, dir) = app_volume(&client, &ns, "data", &[]).await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    // What the app wrote.
    std::fs::write(dir.join("a.txt"), "alpha").unwrap();
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/b.txt"), "beta").unwrap();

    let g = stowage_testkit::garage::shared();
    let bucket = g.bucket("kube-mover");
    let repo = format!("{bucket}/{ns}/data");
    let mut data: std::collections::BTreeMap<String, String> = g.env(&repo).into_iter().collect();
    data.insert("RESTIC_PASSWORD".into(), "kube-test-password".into());
    let allow_http = data.remove("STOWAGE_ALLOW_HTTP").unwrap();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "run-secret"}, "stringData": data,
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret");

    let uid = pvc.metadata.uid.clone().unwrap();
    let mut spec = MoverJobSpec::new(
        Operation::Backup,
        "backup-data",
        &ns,
        "data",
        &uid,
        "ghcr.io/stowage-backup/stowage-mover:0.1.0",
        "run-secret",
    );
    spec.placement = Placement::Anywhere;
    spec.env.push(("STOWAGE_ALLOW_HTTP".into(), allow_http));
    let job = mover_job(&spec);
    Api::<Job>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &job)
        .await
        .expect("mover job");
    let job = finished_job(&client, &ns, "backup-data").await;
    let mover_pod = first_with_labels(
        pods.clone(),
        "batch.kubernetes.io/job-name=backup-data",
        "mover pod",
    )
    .await;
    let pod_name = mover_pod.metadata.name.clone().unwrap();
    let log = c.kubelet.log(&ns, &pod_name);
    assert!(
        job_has(&job, "Complete"),
        "mover Job failed: {:?}\nmover log:\n{log}",
        job.status
    );
    // The termination message, as the scheduler reads it.
    let pod = pods.get(&pod_name).await.unwrap();
    let terminated = pod.status.unwrap().container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!(terminated.exit_code, 0);
    let result: RunResult = serde_json::from_str(
        terminated
            .message
            .as_deref()
            .expect("termination message")
            .trim(),
    )
    .unwrap_or_else(|e| panic!("result line: {e}: {:?}", terminated.message));
    assert!(result.ok, "{result:?}");
    assert_eq!(result.files, 2, "{result:?}\n{log}");
    assert_eq!(result.bytes, 9, "{result:?}");
}

/// A fresh install, as a user makes it: the shipped app and components from Flux, the
/// credentials Secret, an app whose PVC opts in with the `backup` label in a
/// namespace enforcing Pod Security `restricted`. An operator starts the scheduler
/// with `kubectl create job --from=cronjob/stowage-scheduler`; it runs as its
/// ServiceAccount through the real RBAC authorizer and the admission policy, starts a
/// mover Job, the mover backs the volume up into Garage, and the next pass records
/// the result on the PVC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_install_the_scheduler_backs_up_an_opted_in_pvc() {
    use stowage_common::k8s::contract::status;

    let _turn = stowage_testkit::kube::scenario::movers_turn().await;
    let c = cluster::cluster();
    let cp = c.cp;
    let scope = cp.scope("fresh");
    let client = cp.client().await;
    install::stowage(cp);
    let ns = scope
        .namespace(
            &client,
            &[("pod-security.kubernetes.io/enforce", "restricted")],
        )
        .await;
    let (_, dir) = app_volume(&client, &ns, "db", &[("backup", "hourly")]).await;
    std::fs::write(dir.join("table.dat"), "rows").unwrap();

    let run_scheduler = |job: String| {
        let client = client.clone();
        async move {
            install::create_job_from(c.cp, "stowage-scheduler", &job)
                .unwrap_or_else(|e| panic!("kubectl create job: {e}"));
            let finished = finished_job(&client, "stowage", &job).await;
            let pod = first_with_labels(
                Api::<Pod>::namespaced(client.clone(), "stowage"),
                &format!("batch.kubernetes.io/job-name={job}"),
                "scheduler pod",
            )
            .await;
            let log = c
                .kubelet
                .log("stowage", pod.metadata.name.as_deref().unwrap());
            assert!(
                job_has(&finished, "Complete"),
                "scheduler Job {job} failed: {:?}\n{log}",
                finished.status
            );
            log
        }
    };
    let first = cp.unique_name("scheduler");
    let log = run_scheduler(first).await;

    // The mover Job it started in the app's namespace.
    let mover = first_with_labels(
        Api::<Job>::namespaced(client.clone(), &ns),
        "app.kubernetes.io/name=stowage-mover",
        "mover Job",
    )
    .await;
    let mover_name = mover.metadata.name.clone().unwrap();
    let done = finished_job(&client, &ns, &mover_name).await;
    let mover_pod = first_with_labels(
        Api::<Pod>::namespaced(client.clone(), &ns),
        &format!("batch.kubernetes.io/job-name={mover_name}"),
        "mover pod",
    )
    .await;
    let mover_log = c
        .kubelet
        .log(&ns, mover_pod.metadata.name.as_deref().unwrap());
    assert!(
        job_has(&done, "Complete"),
        "mover Job failed: {:?}\nscheduler:\n{log}\nmover:\n{mover_log}",
        done.status
    );

    let second = cp.unique_name("scheduler");
    let log = run_scheduler(second).await;
    let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
        .get("db")
        .await
        .unwrap();
    let ann = pvc.metadata.annotations.unwrap_or_default();
    assert_eq!(
        ann.get(status::LAST_RESULT).map(String::as_str),
        Some("Succeeded"),
        "annotations {ann:?}\nscheduler:\n{log}"
    );
    assert!(ann.contains_key(status::LAST_SNAPSHOT), "{ann:?}");
}
