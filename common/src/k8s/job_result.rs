//! The mover's result of a Job, read the same way by every program that starts mover
//! Jobs (the scheduler's backups, prewarm's restores, the manual restore).

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use super::describe_kube_error;
use crate::result::RunResult;

/// The result of `job` from its `pods`: the last result line of the termination
/// message of the newest terminated pod (a failed pod's too: the mover writes its
/// result before it exits non-zero); a Job that failed without one (deadline, image
/// pull, eviction) gets its `Failed` condition as the error. `None`: no result yet.
pub fn of_pods(job: &Job, pods: &[Pod]) -> Option<RunResult> {
    let mut messages: Vec<(Option<jiff::Timestamp>, &str)> = pods
        .iter()
        .filter_map(|p| {
            let term = p
                .status
                .as_ref()?
                .container_statuses
                .as_ref()?
                .iter()
                .find_map(|c| c.state.as_ref()?.terminated.as_ref())?;
            Some((
                term.finished_at.as_ref().map(|t| t.0),
                term.message.as_deref().unwrap_or_default(),
            ))
        })
        .collect();
    messages.sort_by_key(|(t, _)| *t);
    let parsed = messages.iter().rev().find_map(|(_, m)| {
        m.lines()
            .rev()
            .find_map(|l| serde_json::from_str::<RunResult>(l).ok())
    });
    if parsed.is_some() {
        return parsed;
    }
    let failed = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Failed" && c.status == "True"))?;
    Some(RunResult {
        ok: false,
        error: Some(format!(
            "Job failed: {} {}",
            failed.reason.clone().unwrap_or_default(),
            failed.message.clone().unwrap_or_default()
        )),
        reason: failed.reason.clone(),
        ..Default::default()
    })
}

/// [`of_pods`] with the pods of `job` listed from the API (Err: what failed, for the
/// Event or log).
pub async fn fetch(client: &Client, job: &Job) -> Result<Option<RunResult>, String> {
    let name = job.name_any();
    let ns = job.namespace().unwrap_or_default();
    let pods = Api::<Pod>::namespaced(client.clone(), &ns)
        .list(&ListParams::default().labels(&format!("job-name={name}")))
        .await
        .map_err(|e| describe_kube_error(&e, &format!("list pods of job {ns}/{name}")))?;
    Ok(of_pods(job, &pods.items))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(failed: Option<(&str, &str)>) -> Job {
        let conditions: Vec<_> = failed
            .into_iter()
            .map(|(r, m)| json!({"type": "Failed", "status": "True", "reason": r, "message": m}))
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": "backup-1", "namespace": "app"},
            "status": {"conditions": conditions},
        }))
        .unwrap()
    }

    fn pod(exit: i32, finished: &str, message: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": format!("p-{finished}")},
            "status": {"containerStatuses": [{
                "name": "mover", "image": "m", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": exit, "finishedAt": finished,
                                         "message": message}}}]},
        }))
        .unwrap()
    }

    fn line(ok: bool, snapshot: &str) -> String {
        let r = RunResult {
            ok,
            snapshot: Some(snapshot.into()),
            ..Default::default()
        };
        format!("progress...\n{}\n", serde_json::to_string(&r).unwrap())
    }

    #[test]
    fn the_newest_pods_last_result_line_failed_pods_included() {
        let pods = [
            pod(1, "2026-11-23T10:00:00Z", &line(false, "a")),
            pod(0, "2026-11-23T10:05:00Z", &line(true, "b")),
        ];
        let r = of_pods(&job(None), &pods).unwrap();
        assert!(r.ok);
        assert_eq!(r.snapshot.as_deref(), Some("b"));
        // A failed pod's result counts: the mover writes it before exiting non-zero.
        let r = of_pods(&job(None), &pods[..1]).unwrap();
        assert!(!r.ok);
        assert_eq!(r.snapshot.as_deref(), Some("a"));
    }

    #[test]
    fn a_job_that_failed_without_a_result_gets_its_condition() {
        let r = of_pods(
            &job(Some((
                "DeadlineExceeded",
                "Job was active longer than specified",
            ))),
            &[pod(137, "2026-11-23T10:00:00Z", "")],
        )
        .unwrap();
        assert!(!r.ok);
        assert_eq!(r.reason.as_deref(), Some("DeadlineExceeded"));
        assert!(r.error.unwrap().contains("active longer"));
        // Running, or finished without a line and without failing: nothing yet.
        assert_eq!(of_pods(&job(None), &[]), None);
        assert_eq!(
            of_pods(&job(None), &[pod(0, "2026-11-23T10:00:00Z", "no json")]),
            None
        );
    }
}
