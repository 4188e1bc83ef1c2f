//! The fake API server driven through the real `kube` client: CRUD with the API
//! server's semantics, selectors, optimistic concurrency, finalizers, garbage
//! collection, namespace termination, events, watches, faults, kubeconfig files and
//! the audit log.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    Namespace, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeClaimStatus, Secret,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions, WatchEvent,
    WatchParams,
};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Error, Resource, ResourceExt};
use serde_json::json;
use stowage_testkit::fakeapi::{Access, FakeApi, Fault, Gvr, PatchBody};

const USER: &str = "tester";

fn ns(name: &str) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn pvc(name: &str, labels: &[(&str, &str)]) -> PersistentVolumeClaim {
    serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "local",
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }))
    .unwrap()
}

async fn setup(namespaces: &[&str]) -> (FakeApi, Client) {
    let fake = FakeApi::start();
    for n in namespaces {
        fake.store().create(&ns(n)).unwrap();
    }
    let client = fake.client_for(USER);
    (fake, client)
}

fn api_code(e: Error) -> (u16, String, String) {
    match e {
        Error::Api(s) => (s.code, s.reason.clone(), s.message.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn pvc_crud_selectors_conflicts_and_finalizers() {
    let (fake, client) = setup(&["apps"]).await;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "apps");

    let created = pvcs
        .create(
            &PostParams::default(),
            &pvc("data", &[("backup", "daily"), ("app", "db")]),
        )
        .await
        .unwrap();
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(
        created.status.as_ref().unwrap().phase.as_deref(),
        Some("Pending")
    );
    pvcs.create(&PostParams::default(), &pvc("cache", &[("app", "db")]))
        .await
        .unwrap();
    pvcs.create(
        &PostParams::default(),
        &pvc("logs", &[("backup", "hourly")]),
    )
    .await
    .unwrap();

    let again = pvcs
        .create(&PostParams::default(), &pvc("data", &[]))
        .await
        .unwrap_err();
    let (code, reason, message) = api_code(again);
    assert_eq!((code, reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(message, "persistentvolumeclaims \"data\" already exists");

    let got = pvcs.get("data").await.unwrap();
    assert_eq!(got.uid(), created.uid());
    assert_eq!(api_code(pvcs.get("nope").await.unwrap_err()).0, 404);
    assert!(pvcs.get_opt("nope").await.unwrap().is_none());

    let names = |l: kube::core::ObjectList<PersistentVolumeClaim>| {
        l.items.iter().map(|p| p.name_any()).collect::<Vec<_>>()
    };
    let sel = |s: &str| ListParams::default().labels(s);
    assert_eq!(
        names(pvcs.list(&sel("backup")).await.unwrap()),
        ["data", "logs"]
    );
    assert_eq!(
        names(pvcs.list(&sel("backup=daily")).await.unwrap()),
        ["data"]
    );
    assert_eq!(
        names(pvcs.list(&sel("backup==daily")).await.unwrap()),
        ["data"]
    );
    assert_eq!(
        names(pvcs.list(&sel("backup!=daily")).await.unwrap()),
        ["cache", "logs"]
    );
    assert_eq!(names(pvcs.list(&sel("!backup")).await.unwrap()), ["cache"]);
    assert_eq!(
        names(
            pvcs.list(&sel("backup in (daily,hourly),app"))
                .await
                .unwrap()
        ),
        ["data"]
    );
    assert_eq!(
        names(pvcs.list(&sel("backup notin (daily)")).await.unwrap()),
        ["cache", "logs"]
    );
    let by_field = pvcs
        .list(&ListParams::default().fields("metadata.name=logs"))
        .await
        .unwrap();
    assert_eq!(names(by_field), ["logs"]);
    let list = pvcs.list(&ListParams::default().limit(1)).await.unwrap();
    assert!(list.metadata.resource_version.is_some());

    // Merge and strategic merge patches.
    let p = pvcs
        .patch(
            "data",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"a": "1"}}})),
        )
        .await
        .unwrap();
    assert_eq!(p.annotations()["a"], "1");
    assert_ne!(p.resource_version(), created.resource_version());
    let p = pvcs
        .patch(
            "data",
            &PatchParams::default(),
            &Patch::Strategic(json!({"metadata": {"annotations": {"b": "2"}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        (p.annotations()["a"].as_str(), p.annotations()["b"].as_str()),
        ("1", "2")
    );
    // A resourceVersion in a patch is a precondition.
    let stale = json!({"metadata": {"resourceVersion": created.resource_version().unwrap(), "labels": {"x": "y"}}});
    let e = pvcs
        .patch("data", &PatchParams::default(), &Patch::Merge(stale))
        .await
        .unwrap_err();
    assert_eq!(api_code(e).0, 409);

    // Replace with a stale resourceVersion conflicts; with the current one it works.
    let mut stale = created.clone();
    stale.labels_mut().insert("new".into(), "label".into());
    let (code, reason, message) = api_code(
        pvcs.replace("data", &PostParams::default(), &stale)
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert!(
        message.starts_with("Operation cannot be fulfilled on persistentvolumeclaims \"data\""),
        "{message}"
    );
    let mut fresh = pvcs.get("data").await.unwrap();
    fresh.labels_mut().insert("new".into(), "label".into());
    let replaced = pvcs
        .replace("data", &PostParams::default(), &fresh)
        .await
        .unwrap();
    assert_eq!(replaced.labels()["new"], "label");

    // Status is a subresource: the main resource does not change it, /status does.
    let mut with_status = replaced.clone();
    with_status.status = Some(PersistentVolumeClaimStatus {
        phase: Some("Bound".into()),
        ..Default::default()
    });
    let r = pvcs
        .replace("data", &PostParams::default(), &with_status)
        .await
        .unwrap();
    assert_eq!(r.status.unwrap().phase.as_deref(), Some("Pending"));
    let r = pvcs
        .patch_status(
            "data",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"phase": "Bound"}, "metadata": {"labels": {"ignored": "x"}}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(r.status.unwrap().phase.as_deref(), Some("Bound"));
    assert!(!r.metadata.labels.unwrap().contains_key("ignored"));

    // Finalizers hold a deleted object with a deletionTimestamp until the last goes.
    pvcs.patch(
        "data",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": ["kubernetes.io/pvc-protection"]}})),
    )
    .await
    .unwrap();
    let d = pvcs.delete("data", &DeleteParams::default()).await.unwrap();
    assert!(d.is_left(), "still present, returned as an object");
    let terminating = pvcs.get("data").await.unwrap();
    assert!(terminating.metadata.deletion_timestamp.is_some());
    pvcs.patch(
        "data",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(pvcs.get_opt("data").await.unwrap().is_none());

    // Delete preconditions.
    let logs = pvcs.get("logs").await.unwrap();
    let wrong = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some("not-the-uid".into()),
            resource_version: None,
        }),
        ..Default::default()
    };
    assert_eq!(
        api_code(pvcs.delete("logs", &wrong).await.unwrap_err()).0,
        409
    );
    let right = DeleteParams {
        preconditions: Some(Preconditions {
            uid: logs.uid(),
            resource_version: logs.resource_version(),
        }),
        ..Default::default()
    };
    pvcs.delete("logs", &right).await.unwrap();
    assert!(
        fake.store()
            .get::<PersistentVolumeClaim>("apps", "logs")
            .is_none()
    );
}

#[tokio::test]
async fn generate_name_namespaces_and_apply() {
    let (fake, client) = setup(&["apps"]).await;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "apps");
    let mut p = pvc("", &[]);
    p.metadata.name = None;
    p.metadata.generate_name = Some("restore-".into());
    let c = pvcs.create(&PostParams::default(), &p).await.unwrap();
    assert!(c.name_any().starts_with("restore-") && c.name_any().len() == "restore-".len() + 5);

    // A missing namespace is NotFound, as on a real cluster.
    let missing: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "ghost");
    let (code, _, message) = api_code(
        missing
            .create(&PostParams::default(), &pvc("x", &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code, message.as_str()),
        (404, "namespaces \"ghost\" not found")
    );

    // Server-side apply creates, then updates.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "apps");
    let applied = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"}, "stringData": {"k": "foo"}});
    let s = secrets
        .patch(
            "creds",
            &PatchParams::apply("test"),
            &Patch::Apply(&applied),
        )
        .await
        .unwrap();
    assert_eq!(s.data.unwrap()["k"].0, b"foo");
    let s = secrets
        .patch("creds", &PatchParams::apply("test"), &Patch::Apply(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds", "labels": {"l": "1"}}})))
        .await
        .unwrap();
    assert_eq!(s.labels()["l"], "1");

    // JSON patch through a raw request (kube's typed JSON patch needs a feature).
    let req = http::Request::patch("/api/v1/namespaces/apps/secrets/creds")
        .header("content-type", "application/json-patch+json")
        .body(
            serde_json::to_vec(
                &json!([{"op": "add", "path": "/metadata/annotations", "value": {"j": "p"}}]),
            )
            .unwrap(),
        )
        .unwrap();
    let s: Secret = client.request(req).await.unwrap();
    assert_eq!(s.annotations()["j"], "p");
    let stored = fake
        .store()
        .get_json(&Gvr::core("secrets"), "apps", "creds")
        .unwrap();
    assert_eq!(stored["metadata"]["annotations"]["j"], "p");
    fake.store()
        .patch_json(
            &Gvr::core("secrets"),
            "apps",
            "creds",
            &PatchBody::Merge(json!({"metadata": {"annotations": {"j": "q"}}})),
        )
        .unwrap();
    assert_eq!(secrets.get("creds").await.unwrap().annotations()["j"], "q");
}

#[tokio::test]
async fn cluster_wide_lists() {
    let (fake, client) = setup(&["a", "b"]).await;
    for n in ["a", "b"] {
        Api::<PersistentVolumeClaim>::namespaced(client.clone(), n)
            .create(&PostParams::default(), &pvc("data", &[("backup", "daily")]))
            .await
            .unwrap();
    }
    let all: Api<PersistentVolumeClaim> = Api::all(client.clone());
    let l = all
        .list(&ListParams::default().labels("backup=daily"))
        .await
        .unwrap();
    let got: Vec<_> = l
        .items
        .iter()
        .map(|p| (p.namespace().unwrap(), p.name_any()))
        .collect();
    assert_eq!(
        got,
        [
            ("a".to_string(), "data".to_string()),
            ("b".into(), "data".into())
        ]
    );
    let ns_list = Api::<Namespace>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(ns_list.items.len(), 2);
    assert_eq!(
        ns_list.items[0].status.as_ref().unwrap().phase.as_deref(),
        Some("Active")
    );

    let pv: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": "pv-1"},
        "spec": {"capacity": {"storage": "1Gi"}, "hostPath": {"path": "/tmp/x"}}
    }))
    .unwrap();
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    pvs.create(&PostParams::default(), &pv).await.unwrap();
    assert_eq!(
        pvs.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
    assert!(fake.store().get::<PersistentVolume>("", "pv-1").is_some());
    // The raw list carries the list kind.
    let raw = client
        .request_text(
            http::Request::get("/api/v1/persistentvolumes")
                .body(vec![])
                .unwrap(),
        )
        .await
        .unwrap();
    let raw: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(raw["kind"], "PersistentVolumeList");
}

#[tokio::test]
async fn events_through_the_recorder() {
    let (fake, client) = setup(&["apps"]).await;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "apps");
    let p = pvcs
        .create(&PostParams::default(), &pvc("data", &[]))
        .await
        .unwrap();
    let recorder = Recorder::new(client.clone(), Reporter::from("stowage-scheduler"));
    let ev = Event {
        type_: EventType::Warning,
        reason: "UnknownPolicy".into(),
        note: Some("policy \"weekly\" is not defined".into()),
        action: "Schedule".into(),
        secondary: None,
    };
    let reference: ObjectReference = p.object_ref(&());
    recorder.publish(&ev, &reference).await.unwrap();
    // The same event again is a patch of the series.
    recorder.publish(&ev, &reference).await.unwrap();
    let events = fake.store().list_json(
        &Gvr::new("events.k8s.io", "v1", "events"),
        Some("apps"),
        None,
    );
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["reason"], "UnknownPolicy");
    assert_eq!(events[0]["regarding"]["name"], "data");
    assert_eq!(events[0]["series"]["count"], 2);
    let verbs: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.group == "events.k8s.io")
        .map(|r| (r.verb, r.code))
        .collect();
    assert_eq!(
        verbs,
        [("create".to_string(), 201), ("patch".to_string(), 200)]
    );
}

fn owned_secret(name: &str, owner: &Job) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: owner.namespace(),
            owner_references: Some(vec![OwnerReference {
                api_version: "batch/v1".into(),
                kind: "Job".into(),
                name: owner.name_any(),
                uid: owner.uid().unwrap(),
                controller: Some(true),
                ..Default::default()
            }]),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn job(name: &str) -> Job {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}}
    }))
    .unwrap()
}

#[tokio::test]
async fn garbage_collection_through_owner_references() {
    let (fake, client) = setup(&["apps"]).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "apps");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "apps");

    let j = jobs
        .create(&PostParams::default(), &job("mover"))
        .await
        .unwrap();
    // The API server labels the template with the controller uid.
    let tl = j
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    assert_eq!(tl["batch.kubernetes.io/controller-uid"], j.uid().unwrap());
    assert_eq!(j.spec.as_ref().unwrap().backoff_limit, Some(6));
    secrets
        .create(&PostParams::default(), &owned_secret("mover-env", &j))
        .await
        .unwrap();
    jobs.delete("mover", &DeleteParams::background())
        .await
        .unwrap();
    assert!(
        secrets.get_opt("mover-env").await.unwrap().is_none(),
        "dependent collected"
    );

    // Deleting a Job without a propagation policy orphans its dependents (batch/v1's
    // default, a classic trap).
    let j = jobs
        .create(&PostParams::default(), &job("mover"))
        .await
        .unwrap();
    secrets
        .create(&PostParams::default(), &owned_secret("mover-env", &j))
        .await
        .unwrap();
    jobs.delete("mover", &DeleteParams::default())
        .await
        .unwrap();
    let orphan = secrets.get("mover-env").await.unwrap();
    assert!(
        orphan
            .metadata
            .owner_references
            .unwrap_or_default()
            .is_empty()
    );

    // A dependent with a finalizer is only marked.
    let j = jobs
        .create(&PostParams::default(), &job("second"))
        .await
        .unwrap();
    let mut s = owned_secret("held", &j);
    s.metadata.finalizers = Some(vec!["test/hold".into()]);
    secrets.create(&PostParams::default(), &s).await.unwrap();
    jobs.delete("second", &DeleteParams::foreground())
        .await
        .unwrap();
    assert!(
        secrets
            .get("held")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    fake.store()
        .modify::<Secret>("apps", "held", |s| s.metadata.finalizers = None)
        .unwrap();
    assert!(secrets.get_opt("held").await.unwrap().is_none());
}

#[tokio::test]
async fn namespace_termination_is_observable_when_held() {
    let (fake, client) = setup(&["apps"]).await;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "apps");
    pvcs.create(&PostParams::default(), &pvc("data", &[]))
        .await
        .unwrap();
    let namespaces: Api<Namespace> = Api::all(client.clone());

    fake.hold_namespace_deletion("apps");
    namespaces
        .delete("apps", &DeleteParams::default())
        .await
        .unwrap();
    let n = namespaces.get("apps").await.unwrap();
    assert_eq!(n.status.unwrap().phase.as_deref(), Some("Terminating"));
    assert!(n.metadata.deletion_timestamp.is_some());
    assert!(
        pvcs.get_opt("data").await.unwrap().is_some(),
        "content still there while held"
    );
    let (code, _, message) = api_code(
        pvcs.create(&PostParams::default(), &pvc("more", &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 403);
    assert!(
        message.contains("because it is being terminated"),
        "{message}"
    );

    fake.release_namespace_deletion("apps");
    assert!(namespaces.get_opt("apps").await.unwrap().is_none());
    assert!(fake.store().list::<PersistentVolumeClaim>(None).is_empty());

    // Not held: gone at once.
    fake.store().create(&ns("other")).unwrap();
    namespaces
        .delete("other", &DeleteParams::default())
        .await
        .unwrap();
    assert!(namespaces.get_opt("other").await.unwrap().is_none());
}

#[tokio::test]
async fn faults_and_audit() {
    let (fake, client) = setup(&["apps"]).await;
    let scheduler = fake.client_for("system:serviceaccount:stowage:stowage-scheduler");
    let all: Api<PersistentVolumeClaim> = Api::all(scheduler.clone());
    fake.inject(
        Fault::forbidden()
            .user("system:serviceaccount:stowage:stowage-scheduler")
            .verb("list")
            .resource("persistentvolumeclaims")
            .times(1),
    );
    let (code, reason, message) = api_code(all.list(&ListParams::default()).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        message,
        "persistentvolumeclaims is forbidden: User \"system:serviceaccount:stowage:stowage-scheduler\" cannot list resource \"persistentvolumeclaims\" in API group \"\" at the cluster scope"
    );
    // Used up: the next list works; another user was never affected.
    all.list(&ListParams::default()).await.unwrap();

    let jobs: Api<Job> = Api::namespaced(scheduler.clone(), "apps");
    fake.inject(Fault::forbidden().resource("jobs").verb("create"));
    let (_, _, message) = api_code(
        jobs.create(&PostParams::default(), &job("j"))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        message,
        "jobs.batch is forbidden: User \"system:serviceaccount:stowage:stowage-scheduler\" cannot create resource \"jobs\" in API group \"batch\" in the namespace \"apps\""
    );
    fake.clear_faults();
    jobs.create(&PostParams::default(), &job("j"))
        .await
        .unwrap();

    fake.inject(
        Fault::error(500, "InternalError", "etcdserver: request timed out")
            .name("j")
            .times(2),
    );
    for _ in 0..2 {
        let (code, reason, message) = api_code(jobs.get("j").await.unwrap_err());
        assert_eq!(
            (code, reason.as_str(), message.as_str()),
            (500, "InternalError", "etcdserver: request timed out")
        );
    }
    jobs.get("j").await.unwrap();

    fake.inject(
        Fault::delay(Duration::from_millis(300))
            .verb("get")
            .times(1),
    );
    let t = Instant::now();
    jobs.get("j").await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300));

    let mine: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.user == "system:serviceaccount:stowage:stowage-scheduler")
        .map(|r| (r.verb, r.resource, r.namespace, r.name, r.code))
        .collect();
    let s = |x: &str| x.to_string();
    assert_eq!(
        mine,
        [
            (s("list"), s("persistentvolumeclaims"), s(""), s(""), 403),
            (s("list"), s("persistentvolumeclaims"), s(""), s(""), 200),
            (s("create"), s("jobs"), s("apps"), s(""), 403),
            (s("create"), s("jobs"), s("apps"), s(""), 201),
            (s("get"), s("jobs"), s("apps"), s("j"), 500),
            (s("get"), s("jobs"), s("apps"), s("j"), 500),
            (s("get"), s("jobs"), s("apps"), s("j"), 200),
            (s("get"), s("jobs"), s("apps"), s("j"), 200),
        ]
    );
    let accesses: Vec<Access> = fake
        .accesses()
        .into_iter()
        .filter(|a| a.user != USER)
        .collect();
    let tuple: Vec<_> = accesses
        .iter()
        .map(|a| (a.verb.as_str(), a.group.as_str(), a.resource.as_str()))
        .collect();
    assert_eq!(
        tuple,
        [
            ("create", "batch", "jobs"),
            ("get", "batch", "jobs"),
            ("list", "", "persistentvolumeclaims")
        ]
    );
    drop(client);
}

#[tokio::test]
async fn kubeconfig_file_works() {
    let fake = FakeApi::start();
    fake.store().create(&ns("stowage")).unwrap();
    let path = fake.kubeconfig_for("system:serviceaccount:stowage:stowage-gc");
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let client = Client::try_from(config).unwrap();
    let n = Api::<Namespace>::all(client)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(n.items[0].name_any(), "stowage");
    let r = fake.requests();
    assert_eq!(r.len(), 1);
    assert_eq!(
        (
            r[0].user.as_str(),
            r[0].verb.as_str(),
            r[0].resource.as_str()
        ),
        (
            "system:serviceaccount:stowage:stowage-gc",
            "list",
            "namespaces"
        )
    );
}

#[tokio::test]
async fn watches_and_await_condition() {
    let (fake, client) = setup(&["apps"]).await;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "apps");
    pvcs.create(&PostParams::default(), &pvc("data", &[]))
        .await
        .unwrap();

    // A raw watch from "now" sees later changes.
    let rv = pvcs
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut stream = pvcs
        .watch(&WatchParams::default().timeout(10), &rv)
        .await
        .unwrap()
        .boxed();
    fake.store()
        .modify::<PersistentVolumeClaim>("apps", "data", |p| {
            p.status.get_or_insert_with(Default::default).phase = Some("Bound".into())
        })
        .unwrap();
    match stream.try_next().await.unwrap().unwrap() {
        WatchEvent::Modified(p) => assert_eq!(p.status.unwrap().phase.as_deref(), Some("Bound")),
        other => panic!("unexpected {other:?}"),
    }

    // kube's watcher-based waiting works.
    pvcs.create(&PostParams::default(), &pvc("later", &[]))
        .await
        .unwrap();
    let store = fake.store().clone();
    tokio::spawn(async move {
        tokio::task::yield_now().await;
        store
            .modify::<PersistentVolumeClaim>("apps", "later", |p| {
                p.status.get_or_insert_with(Default::default).phase = Some("Bound".into())
            })
            .unwrap();
    });
    let bound = tokio::time::timeout(
        Duration::from_secs(10),
        kube::runtime::wait::await_condition(
            pvcs.clone(),
            "later",
            |p: Option<&PersistentVolumeClaim>| {
                p.and_then(|p| p.status.as_ref()?.phase.as_deref()) == Some("Bound")
            },
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(bound.is_some());
}
