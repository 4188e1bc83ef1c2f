//! The world of the populator's rounds on the fake API (`pass_io`, `api_faults`):
//! stowage installed with the class `local` judged safe, user PVCs in `app`,
//! repositories in local directories written by the real `stowage-mover`; the binder
//! and the Job controller are played by the test.

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::events::v1::Event;
use serde_json::json;
use stowage_common::k8s::contract::prewarm as pc;
use stowage_prewarm::pass::{self, Ctx, Report};
use stowage_testkit::sim::{BindingMode, PvcSpec, StorageClassSpec};
use stowage_testkit::world::{self, ApiWorld, Keys, World, bind_claims, restore_pvc};

pub const NS: &str = "stowage";
pub const USER: &str = "system:serviceaccount:stowage:stowage-prewarm";
pub const MASTER: &str = "master secret";

pub fn world() -> ApiWorld {
    World::builder(MASTER)
        .namespace("app")
        // The probe found the class safe earlier (probing: plan.rs, prewarm_e2e).
        .safe_storage_class(StorageClassSpec::local_csi("local").binding(BindingMode::Immediate))
        .mover_keys(Keys::Fixed("AK", "SK"))
        .build_api()
}

/// A backup of `app/<pvc>` under the base, with `password` (default: derived).
pub fn backup(w: &ApiWorld, pvc: &str, password: Option<&str>) {
    let data = w.scratch().join("data").join(pvc);
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("f.txt"), "hello").unwrap();
    match password {
        Some(pw) => w.backup_with_password("app", pvc, &data, pw),
        None => w.backup("app", pvc, &data),
    };
}

/// Creates the user PVC `spec` in `app`.
pub fn create(w: &ApiWorld, spec: PvcSpec) {
    w.api.store().create(&spec.build("app")).unwrap();
}

/// Creates the user PVC `app/<name>` of class `local`, populated from its own backups.
pub fn pvc(w: &ApiWorld, name: &str) {
    create(w, restore_pvc(name, name).class("local"));
}

pub async fn try_round(ctx: &Ctx) -> anyhow::Result<Report> {
    let mut r = Report::default();
    pass::round(ctx, Timestamp::now(), &mut r).await.map(|_| r)
}

/// A round that must not fail as a whole.
pub async fn round(ctx: &Ctx) -> Report {
    try_round(ctx).await.expect("the round itself succeeds")
}

pub fn prime_pvcs(w: &ApiWorld) -> Vec<PersistentVolumeClaim> {
    world::prime_pvcs(w.api.store(), NS)
}

/// The binder: every prime PVC gets a volume.
pub fn bind_primes(w: &ApiWorld) {
    bind_claims(&w.api, NS, pc::prime::NAME_PREFIX);
}

pub fn restore_jobs(w: &ApiWorld) -> Vec<Job> {
    w.api.store().list(Some(NS))
}

/// Marks a restore Job done with the mover's result line.
pub fn finish(w: &ApiWorld, job: &str, ok: bool, message: &str) {
    w.api.put::<Pod>(
        json!({"metadata": {"name": format!("{job}-x"), "namespace": NS,
                            "labels": {"job-name": job}},
               "spec": {"containers": [{"name": "mover", "image": "m"}]}}),
    );
    w.api
        .store()
        .modify::<Pod>(NS, &format!("{job}-x"), |p| {
            p.status = Some(
                serde_json::from_value(json!({
                    "phase": if ok { "Succeeded" } else { "Failed" },
                    "containerStatuses": [{"name": "mover", "image": "m", "imageID": "",
                        "ready": false, "restartCount": 0,
                        "state": {"terminated": {"exitCode": if ok {0} else {1},
                            "finishedAt": "2026-11-23T10:05:00Z", "message": message}}}]
                }))
                .unwrap(),
            );
        })
        .unwrap();
    w.api
        .store()
        .modify::<Job>(NS, job, |j| {
            j.status = Some(
                serde_json::from_value(json!({"conditions": [{
                    "type": if ok { "Complete" } else { "Failed" }, "status": "True"}]}))
                .unwrap(),
            );
        })
        .unwrap();
}

/// What a mover that restored the plan of `job`'s prime PVC reports (its snapshot id
/// and repository).
pub fn restored(w: &ApiWorld, job: &str) -> String {
    let j: Job = w.api.store().get(NS, job).unwrap();
    let uid = j.metadata.labels.unwrap()["stowage.io/pvc-uid"].clone();
    let prime: PersistentVolumeClaim = w
        .api
        .store()
        .get(NS, &format!("{}{uid}", pc::prime::NAME_PREFIX))
        .unwrap();
    let a = prime.metadata.annotations.unwrap();
    json!({"operation": "restore", "ok": true, "restored": true, "files": 1, "bytes": 5,
           "added_bytes": 0, "uploaded_bytes": 0, "downloaded_bytes": 0, "duration_secs": 0.1,
           "snapshot": a[pc::prime::SNAPSHOT], "repository": a[pc::prime::REPOSITORY]})
    .to_string()
}

pub fn user(w: &ApiWorld, name: &str) -> PersistentVolumeClaim {
    w.api.store().get("app", name).unwrap()
}

pub fn events(w: &ApiWorld, pvc: &str, reason: &str) -> usize {
    w.api
        .store()
        .list::<Event>(Some("app"))
        .iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(pvc)
        })
        .count()
}

/// The PV now claimed by the user PVC.
pub fn handed_over(w: &ApiWorld, pvc: &str) -> bool {
    let uid = user(w, pvc).metadata.uid;
    w.api
        .store()
        .list::<PersistentVolume>(None)
        .iter()
        .any(|pv| {
            pv.spec
                .as_ref()
                .and_then(|s| s.claim_ref.as_ref())
                .and_then(|c| c.uid.clone())
                == uid
        })
}
