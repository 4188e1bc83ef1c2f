//! `pods/{name}/exec` over WebSocket, as the real `kube` client speaks it (kube feature
//! `ws`): the upgrade handshake with the `v4.channel.k8s.io` subprotocol, stdout and
//! stderr as binary frames on channels 1 and 2, and the final `Status` on channel 3
//! (`Success`, or `Failure` with reason `NonZeroExitCode` and the exit code as a cause,
//! as the kubelet reports it). What the command does is up to an [`ExecHandler`] (the
//! simulator runs it as a local process); without one, every exec fails with a Status.
//! A client that goes away (a hook timeout) drops the handler's future.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::{ApiError, AuditRecord, FaultAction, Shared, forbidden_message};

/// One exec request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecRequest {
    /// Namespace of the pod.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Container (`container=` parameter; `""` when not given).
    pub container: String,
    /// The command (`command=` parameters, in order).
    pub command: Vec<String>,
}

/// What the command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutput {
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
    /// Exit code; `Err`: the exec could not run at all (the message the API gives, e.g.
    /// `container "x" not found`).
    pub exit: Result<i32, String>,
}

/// Runs exec requests.
pub type ExecHandler =
    Arc<dyn Fn(ExecRequest) -> Pin<Box<dyn Future<Output = ExecOutput> + Send>> + Send + Sync>;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

const PROTOCOL: &str = "v4.channel.k8s.io";

fn status_of(exit: &Result<i32, String>) -> Value {
    match exit {
        Ok(0) => json!({"metadata": {}, "status": "Success"}),
        Ok(code) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Err(message) => json!({
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": "InternalError",
        }),
    }
}

fn plain(code: u16, e: &ApiError) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(e.to_status().to_string())).boxed())
        .expect("response")
}

/// Serves one exec request (audited as `create pods/exec`, which is what the API
/// server authorizes for WebSocket exec since Kubernetes 1.30).
pub(crate) async fn serve(
    shared: Arc<Shared>,
    mut record: AuditRecord,
    params: Vec<(String, String)>,
    mut req: Request<Incoming>,
) -> Response<Body> {
    record.verb = "create".into();
    let audit = shared.clone();
    let base = record.clone();
    let finish = move |code: u16, response: Response<Body>| {
        let mut r = base.clone();
        r.code = code;
        audit
            .audit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(r);
        response
    };
    match shared.take_fault(&record) {
        Some(FaultAction::Forbidden) => {
            let e = ApiError::forbidden(forbidden_message(&record));
            return finish(403, plain(403, &e));
        }
        Some(FaultAction::Error(e)) => return finish(e.code, plain(e.code, &e)),
        Some(FaultAction::Delay(d)) => tokio::time::sleep(d).await,
        Some(FaultAction::Hold(g)) if !g.hold().await => {
            let e = ApiError::new(
                503,
                "ServiceUnavailable",
                "request dropped by the test".into(),
            );
            return finish(503, plain(503, &e));
        }
        Some(FaultAction::Hold(_)) => {}
        None => {}
    }
    let Some(key) = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| k.as_bytes().to_vec())
    else {
        let e = ApiError::bad_request("exec needs a WebSocket upgrade".into());
        return finish(400, plain(400, &e));
    };
    if shared
        .store
        .get_json(&super::Gvr::core("pods"), &record.namespace, &record.name)
        .is_none()
    {
        let e = ApiError::not_found(&super::Gvr::core("pods"), &record.name);
        return finish(404, plain(404, &e));
    }
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let request = ExecRequest {
        namespace: record.namespace.clone(),
        pod: record.name.clone(),
        container: param("container").unwrap_or_default(),
        command: params
            .iter()
            .filter(|(k, _)| k == "command")
            .map(|(_, v)| v.clone())
            .collect(),
    };
    let handler = shared
        .exec
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        let (mut tx, mut rx) = ws.split();
        let run = async {
            match handler {
                Some(h) => h(request).await,
                None => ExecOutput {
                    stdout: Vec::new(),
                    stderr: Vec::new(),
                    exit: Err("this fake API server has no exec handler".into()),
                },
            }
        };
        // A client that leaves (closes, errors) cancels the command.
        let gone = async {
            loop {
                match rx.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    _ => {}
                }
            }
        };
        let out = tokio::select! {
            out = run => out,
            _ = gone => return,
        };
        for (channel, data) in [(1u8, &out.stdout), (2u8, &out.stderr)] {
            for chunk in data.chunks(16 * 1024) {
                let mut frame = vec![channel];
                frame.extend_from_slice(chunk);
                if tx.send(Message::binary(frame)).await.is_err() {
                    return;
                }
            }
        }
        let mut frame = vec![3u8];
        frame.extend_from_slice(status_of(&out.exit).to_string().as_bytes());
        let _ = tx.send(Message::binary(frame)).await;
        let _ = tx.send(Message::Close(None)).await;
    });
    let response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-accept", derive_accept_key(&key))
        .header("sec-websocket-protocol", PROTOCOL)
        .body(Full::new(Bytes::new()).boxed())
        .expect("response");
    finish(101, response)
}
