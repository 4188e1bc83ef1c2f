//! Kubernetes API errors in the populator's rounds and the index (fake API, real `kube`
//! client, the real pass; repositories are local directories written by the real
//! `stowage-mover`; the binder and the Job controller are played by the test): a 500 or
//! a conflict at each call of a populate, a failed list, a Restore object that cannot
//! be read, an API server that does not answer in time. Each round either fails
//! clearly (it names the call) or converges; the next round converges; a volume is
//! never bound empty or from the wrong source because of an API error.

use crate::support::*;

use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim, Secret};
use serde_json::json;
use stowage_common::env::PrewarmConfig;
use stowage_common::k8s::contract::prewarm as pc;
use stowage_prewarm::pass::{Ctx, Report};
use stowage_testkit::fakeapi::{Fault, Gvr};
use stowage_testkit::world::{ApiWorld, restore_pvc};

fn context(w: &ApiWorld) -> Ctx {
    let cfg = PrewarmConfig::from_vars(&[
        ("STOWAGE_REPOSITORY_BASE".into(), w.base()),
        ("STOWAGE_RESTORE_BACKOFF_SECONDS".into(), "1".into()),
    ])
    .unwrap();
    Ctx::new(w.api.client_for(USER), cfg)
}

/// The binder, for a user PVC whose volume was handed over.
fn bind_user(w: &ApiWorld, pvc: &str) {
    let uid = user(w, pvc).metadata.uid;
    let pv = w
        .api
        .store()
        .list::<PersistentVolume>(None)
        .into_iter()
        .find(|pv| {
            pv.spec
                .as_ref()
                .and_then(|s| s.claim_ref.as_ref())
                .and_then(|c| c.uid.clone())
                == uid
        })
        .and_then(|pv| pv.metadata.name)
        .expect("handed over");
    w.api
        .store()
        .modify::<PersistentVolumeClaim>("app", pvc, |p| {
            p.spec.as_mut().unwrap().volume_name = Some(pv.clone());
            p.status = Some(serde_json::from_value(json!({"phase": "Bound"})).unwrap());
        })
        .unwrap();
}

/// Marks a restore Job done, having restored what was planned.
fn finish_restored(w: &ApiWorld, job: &str) {
    finish(w, job, true, &restored(w, job));
}

fn one_error(r: &Report, needle: &str, what: &str) {
    assert!(
        r.errors
            .iter()
            .any(|e| e.contains(needle) && e.contains(what)),
        "an error naming {needle:?} and {what:?}: {:?}",
        r.errors
    );
}

fn error(code: u16, reason: &str, message: &str) -> Fault {
    Fault::error(code, reason, message)
}

/// A populate with an API error at each of its calls, one at a time: the round fails
/// clearly (names the call and what to do) or goes on, the next round converges, and
/// exactly one restore Job, one per-run Secret and one hand-over result.
#[tokio::test]
async fn an_api_error_at_each_call_of_a_populate_fails_clearly_and_the_next_round_converges() {
    let w = world();
    backup(&w, "db", None);
    pvc(&w, "db");
    let ctx = context(&w);
    const LEADER: &str = "etcdserver: leader changed";

    // Listing the PVCs fails: the round fails, naming the call; nothing is created.
    w.api.inject(
        error(500, "InternalError", LEADER)
            .verb("list")
            .resource("persistentvolumeclaims")
            .times(1),
    );
    let e = try_round(&ctx).await.unwrap_err().to_string();
    assert!(
        e.contains("cannot list persistentvolumeclaims in all namespaces") && e.contains(LEADER),
        "{e}"
    );
    assert!(
        e.contains("retries") || e.contains("again"),
        "says what to do: {e}"
    );
    assert!(prime_pvcs(&w).is_empty());

    // Creating the prime PVC fails (500), then conflicts (409, not AlreadyExists).
    w.api.inject(
        error(500, "InternalError", LEADER)
            .verb("create")
            .resource("persistentvolumeclaims")
            .namespace(NS)
            .times(1),
    );
    let r = round(&ctx).await;
    one_error(&r, "cannot create persistentvolumeclaim stowage/", LEADER);
    assert!(prime_pvcs(&w).is_empty());
    w.api.inject(
        error(409, "Conflict", "Operation cannot be fulfilled: try again")
            .verb("create")
            .resource("persistentvolumeclaims")
            .namespace(NS)
            .times(1),
    );
    round(&ctx).await;
    if prime_pvcs(&w).is_empty() {
        // Taken for "exists already": the next round sees it does not and creates it.
        let r = round(&ctx).await;
        assert!(r.errors.is_empty(), "{:?}", r.errors);
    }
    assert_eq!(prime_pvcs(&w).len(), 1, "the prime PVC, once");
    bind_primes(&w);

    // Listing the restore Jobs fails: the round fails, naming the call.
    w.api.inject(
        error(500, "InternalError", LEADER)
            .verb("list")
            .resource("jobs")
            .times(1),
    );
    let e = try_round(&ctx).await.unwrap_err().to_string();
    assert!(
        e.contains("cannot list jobs in namespace stowage") && e.contains(LEADER),
        "{e}"
    );
    assert!(restore_jobs(&w).is_empty());

    // Creating the Job fails; then creating its per-run Secret fails.
    w.api.inject(
        error(500, "InternalError", LEADER)
            .verb("create")
            .resource("jobs")
            .times(1),
    );
    let r = round(&ctx).await;
    one_error(&r, "cannot create job stowage/", LEADER);
    assert!(restore_jobs(&w).is_empty());
    w.api.inject(
        error(500, "InternalError", LEADER)
            .verb("create")
            .resource("secrets")
            .namespace(NS)
            .times(1),
    );
    let r = round(&ctx).await;
    assert!(
        r.errors
            .iter()
            .any(|e| e.contains("secret") && e.contains(LEADER)),
        "{:?}",
        r.errors
    );
    assert_eq!(
        restore_jobs(&w).len(),
        1,
        "the Job exists, its Secret not yet"
    );
    // The next round completes the start: the same Job, its Secret now.
    let r = round(&ctx).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(restore_jobs(&w).len(), 1);
    let secrets: Vec<Secret> = w.api.store().list(Some(NS));
    assert_eq!(secrets.len(), 2, "credentials and one per-run Secret");
    let job = restore_jobs(&w)[0].metadata.name.clone().unwrap();
    finish_restored(&w, &job);

    // The hand-over: reading the Job's result, the record on the PVC, the PV move.
    for (fault, call) in [
        (
            error(500, "InternalError", LEADER)
                .verb("list")
                .resource("pods")
                .times(1),
            "cannot list pods of job stowage/",
        ),
        (
            error(500, "InternalError", LEADER)
                .verb("patch")
                .resource("persistentvolumeclaims")
                .namespace("app")
                .times(1),
            "cannot annotate persistentvolumeclaim app/db",
        ),
        (
            error(500, "InternalError", LEADER)
                .verb("patch")
                .resource("persistentvolumes")
                .times(1),
            "cannot move persistentvolume",
        ),
    ] {
        w.api.inject(fault);
        let r = round(&ctx).await;
        one_error(&r, call, LEADER);
        assert!(!handed_over(&w, "db"), "{call}: not bound yet");
    }
    // Deleting the prime after the move fails: the volume is the PVC's already; the
    // next round deletes the prime.
    w.api.inject(
        error(500, "InternalError", LEADER)
            .verb("delete")
            .resource("persistentvolumeclaims")
            .namespace(NS)
            .times(1),
    );
    let r = round(&ctx).await;
    one_error(&r, "persistentvolumeclaim stowage/", LEADER);
    assert!(handed_over(&w, "db"));
    bind_user(&w, "db");
    let r = round(&ctx).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(
        prime_pvcs(&w).is_empty(),
        "the prime is gone after the re-run"
    );
    assert_eq!(events(&w, "db", pc::reason::RESTORED), 1, "one hand-over");
    assert_eq!(events(&w, "db", pc::reason::BOUND_EMPTY), 0);
    assert!(
        restore_jobs(&w).is_empty(),
        "the restore Job goes with its prime"
    );
}

/// The Restore object names another PVC's backups; reading it fails (500). The PVC's
/// own repository does not exist, so reading the error as "no Restore object" would
/// bind it empty: the PVC waits instead, and the next round restores the named source.
#[tokio::test]
async fn a_restore_object_that_cannot_be_read_never_binds_empty_or_from_the_wrong_source() {
    let w = world();
    backup(&w, "src", None);
    let restores = Gvr::new("stowage.io", "v1alpha1", "restores");
    w.api
        .store()
        .create_json(
            &restores,
            "app",
            json!({"apiVersion": "stowage.io/v1alpha1", "kind": "Restore",
                   "metadata": {"name": "from-src", "namespace": "app"},
                   "spec": {"sourcePvc": "src"}}),
        )
        .unwrap();
    create(&w, restore_pvc("copy", "from-src").class("local"));
    let ctx = context(&w);
    w.api.inject(
        error(500, "InternalError", "etcdserver: request timed out")
            .verb("get")
            .resource("restores")
            .times(1),
    );
    let r = round(&ctx).await;
    assert!(
        prime_pvcs(&w).is_empty(),
        "no prime PVC from a guess: {:?}",
        prime_pvcs(&w)
            .iter()
            .map(|p| p.metadata.annotations.clone())
            .collect::<Vec<_>>()
    );
    one_error(&r, "cannot get restore app/from-src", "request timed out");
    let r = round(&ctx).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let primes = prime_pvcs(&w);
    assert_eq!(primes.len(), 1);
    let ann = primes[0].metadata.annotations.clone().unwrap();
    assert!(
        ann[pc::prime::REPOSITORY].ends_with("/app/src"),
        "restores the named source: {ann:?}"
    );
    assert!(!ann[pc::prime::SNAPSHOT].is_empty(), "{ann:?}");
    assert!(!ann.contains_key(pc::prime::EMPTY_REASON), "{ann:?}");
}

/// The binary against an API server that does not answer (delay fault beyond the
/// client timeout): the run fails in time and names the call; with the API back, the
/// next run succeeds. The index: its ConfigMap cannot be written (500), the run fails
/// naming it; the next run stores it.
#[test]
fn a_hung_api_and_a_failed_index_write_fail_the_run_clearly_and_a_rerun_converges() {
    let w = world();
    backup(&w, "db", None);
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_stowage-prewarm"))
            .env_clear()
            .env("KUBECONFIG", w.api.kubeconfig_for(USER))
            .env("STOWAGE_REPOSITORY_BASE", w.base())
            .env("STOWAGE_API_TIMEOUT_SECS", "1")
            .env("STOWAGE_LOG_FORMAT", "text")
            .arg("--once")
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    // Every attempt hangs (the client's own retry of a timed-out request included).
    w.api.inject(
        Fault::delay(std::time::Duration::from_secs(20))
            .verb("list")
            .resource("persistentvolumeclaims"),
    );
    let started = std::time::Instant::now();
    let (code, log) = run(&["--no-index"]);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("cannot list persistentvolumeclaims in all namespaces")
            && log.contains("did not answer in time"),
        "{log}"
    );
    // Only that the 1 s limit, not the 20 s delay, ended the run.
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    w.api.clear_faults();
    let (code, log) = run(&["--no-index"]);
    assert_eq!(code, Some(0), "{log}");

    w.api.inject(
        error(500, "InternalError", "etcdserver: leader changed")
            .verb("create")
            .resource("configmaps")
            .name("")
            .times(1),
    );
    let (code, log) = run(&["--index-now"]);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("cannot create configmap stowage/stowage-index")
            && log.contains("leader changed"),
        "{log}"
    );
    assert!(
        w.api
            .store()
            .get::<ConfigMap>(NS, "stowage-index")
            .is_none()
    );
    let (code, log) = run(&["--index-now"]);
    assert_eq!(code, Some(0), "{log}");
    let cm: ConfigMap = w.api.store().get(NS, "stowage-index").unwrap();
    assert!(
        cm.data.unwrap()[pc::INDEX_KEY].contains("\"db\""),
        "the index lists the repository"
    );
}

/// Once the volume is handed over and the user PVC is bound, the restore Job goes with
/// the prime PVC: its finished pod names the prime, and on a real cluster the PVC
/// protection controller keeps a PVC Terminating while a pod bound to a node names it
/// (found on the real control plane: the prime PVCs stayed for the Job's day-long TTL).
#[tokio::test]
async fn the_restore_job_goes_with_the_prime_pvc_once_the_volume_is_handed_over() {
    let w = world();
    backup(&w, "db", None);
    pvc(&w, "db");
    let ctx = context(&w);
    round(&ctx).await;
    bind_primes(&w);
    round(&ctx).await;
    let jobs = restore_jobs(&w);
    assert_eq!(jobs.len(), 1, "one restore Job");
    finish_restored(&w, jobs[0].metadata.name.as_deref().unwrap());
    round(&ctx).await;
    assert!(handed_over(&w, "db"));
    bind_user(&w, "db");
    let r = round(&ctx).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(prime_pvcs(&w).is_empty(), "prime PVC deleted");
    assert!(restore_jobs(&w).is_empty(), "restore Job deleted with it");
}
