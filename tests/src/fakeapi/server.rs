//! The HTTP side of the fake API server: routing of Kubernetes REST paths to the store,
//! the audit log, fault injection and watch streams.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::SinkExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use super::resources::Gvr;
use super::selector::{FieldSelector, LabelSelector};
use super::store::{DeleteOpts, Mode, PatchBody, Propagation};
use super::{ApiError, AuditRecord, FaultAction, Shared, forbidden_message};

type Body = BoxBody<Bytes, Infallible>;

/// Accepts connections until `shutdown` fires.
pub(crate) async fn serve(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(shared, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades() // pods/exec (WebSocket)
                .await;
        });
    }
}

/// A parsed REST path.
#[derive(Debug)]
struct Target {
    gvr: Gvr,
    namespace: String,
    name: String,
    subresource: String,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    // `/namespaces/{ns}/{plural}...` is namespaced content, except the namespace's own
    // subresources (`/api/v1/namespaces/{name}/status`).
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, rest @ ..]
            if !(group.is_empty() && matches!(*plural, "status" | "finalize")) =>
        {
            let mut r = vec![*plural];
            r.extend_from_slice(rest);
            (ns.to_string(), r)
        }
        _ => (String::new(), rest.to_vec()),
    };
    let (plural, name, sub) = match rest.as_slice() {
        [p] => (*p, "", ""),
        [p, n] => (*p, *n, ""),
        [p, n, s] => (*p, *n, *s),
        _ => return None,
    };
    if plural.is_empty() {
        return None;
    }
    Some(Target {
        gvr: Gvr::new(group, version, plural),
        namespace,
        name: name.to_string(),
        subresource: sub.to_string(),
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_params(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed())
        .expect("response")
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.to_status())
}

fn user_of(req: &Request<Incoming>) -> String {
    req.headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string())
        .unwrap_or_else(|| "system:anonymous".into())
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    if path == "/version" {
        return json_response(
            200,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake", "platform": "linux/amd64"}),
        );
    }
    let params = query_params(req.uri().query());
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let Some(t) = parse_path(&path) else {
        return error_response(&ApiError::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        ));
    };
    let watch = matches!(param("watch").as_deref(), Some("true" | "1"));
    let verb = match (req.method().clone(), t.name.is_empty()) {
        (Method::GET, false) => "get",
        (Method::GET, true) if watch => "watch",
        (Method::GET, true) => "list",
        (Method::POST, _) => "create",
        (Method::PUT, _) => "update",
        (Method::PATCH, _) => "patch",
        (Method::DELETE, false) => "delete",
        (Method::DELETE, true) => "deletecollection",
        _ => "unknown",
    };
    let mut record = AuditRecord {
        user: user_of(&req),
        verb: verb.into(),
        group: t.gvr.group.clone(),
        version: t.gvr.version.clone(),
        resource: t.gvr.plural.clone(),
        subresource: t.subresource.clone(),
        namespace: t.namespace.clone(),
        name: t.name.clone(),
        code: 0,
    };
    // pods/exec: a WebSocket upgrade (exec.rs).
    if t.gvr.group.is_empty() && t.gvr.plural == "pods" && t.subresource == "exec" {
        return super::exec::serve(shared, record, params, req).await;
    }
    let content_type = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let fault = shared.take_fault(&record);
    let response = match fault {
        Some(FaultAction::Forbidden) => {
            error_response(&ApiError::forbidden(forbidden_message(&record)))
        }
        Some(FaultAction::Error(e)) => error_response(&e),
        Some(FaultAction::Delay(d)) => {
            tokio::time::sleep(d).await;
            route(&shared, &t, verb, &params, &content_type, &body)
        }
        Some(FaultAction::Hold(g)) => {
            if g.hold().await {
                route(&shared, &t, verb, &params, &content_type, &body)
            } else {
                error_response(&ApiError::new(
                    503,
                    "ServiceUnavailable",
                    "request dropped by the test (held, never executed)".into(),
                ))
            }
        }
        None => route(&shared, &t, verb, &params, &content_type, &body),
    };
    record.code = response.status().as_u16();
    shared
        .audit
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(record);
    response
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

fn route(
    shared: &Arc<Shared>,
    t: &Target,
    verb: &str,
    params: &[(String, String)],
    content_type: &str,
    body: &Bytes,
) -> Response<Body> {
    if verb == "watch" {
        return watch(shared, t, params);
    }
    let store = &shared.store;
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let mode = match t.subresource.as_str() {
        "" => Mode::Main,
        "status" => Mode::Status,
        other => {
            return error_response(&ApiError::new(
                404,
                "NotFound",
                format!(
                    "the server could not find the requested resource ({}/{other})",
                    t.gvr.plural
                ),
            ));
        }
    };
    let selectors = || -> Result<(Option<LabelSelector>, Option<FieldSelector>), ApiError> {
        Ok((
            param("labelSelector")
                .map(LabelSelector::parse)
                .transpose()?,
            param("fieldSelector")
                .map(FieldSelector::parse)
                .transpose()?,
        ))
    };
    let ns = (!t.namespace.is_empty()).then_some(t.namespace.as_str());
    let result: Result<(u16, Value), ApiError> = (|| match verb {
        "get" => store
            .get_json(&t.gvr, &t.namespace, &t.name)
            .map(|o| (200, o))
            .ok_or_else(|| ApiError::not_found(&t.gvr, &t.name)),
        "list" => {
            let (l, f) = selectors()?;
            let (items, rv) = store.list_at(&t.gvr, ns, l.as_ref(), f.as_ref());
            Ok((200, list_object(&t.gvr, items, rv)))
        }
        "create" => {
            if !t.name.is_empty() {
                return Err(ApiError::new(
                    405,
                    "MethodNotAllowed",
                    format!(
                        "create is not supported on {}/{}",
                        t.gvr.plural, t.subresource
                    ),
                ));
            }
            store
                .create_mode(&t.gvr, &t.namespace, parse_body(body)?, Mode::Main)
                .map(|o| (201, o))
        }
        "update" => store
            .update_mode(&t.gvr, &t.namespace, &t.name, parse_body(body)?, mode)
            .map(|o| (200, o)),
        "patch" => {
            let v = parse_body(body)?;
            let ct = content_type.split(';').next().unwrap_or("").trim();
            let patch = match ct {
                "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                    PatchBody::Merge(v)
                }
                "application/apply-patch+yaml" => PatchBody::Apply(v),
                "application/json-patch+json" => PatchBody::Json(
                    serde_json::from_value(v)
                        .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?,
                ),
                other => {
                    return Err(ApiError::new(
                        415,
                        "UnsupportedMediaType",
                        format!(
                            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {other:?})"
                        ),
                    ));
                }
            };
            let existed = store.get_json(&t.gvr, &t.namespace, &t.name).is_some();
            store
                .patch_mode(&t.gvr, &t.namespace, &t.name, &patch, mode)
                .map(|o| (if existed { 200 } else { 201 }, o))
        }
        "delete" => {
            let opts = delete_opts(params, body)?;
            let o = store.delete_json(&t.gvr, &t.namespace, &t.name, &opts)?;
            let still = store.get_json(&t.gvr, &t.namespace, &t.name).is_some();
            Ok((if still { 202 } else { 200 }, o))
        }
        "deletecollection" => {
            let opts = delete_opts(params, body)?;
            let (l, f) = selectors()?;
            let (items, _) = store.list_at(&t.gvr, ns, l.as_ref(), f.as_ref());
            let mut deleted = Vec::new();
            for it in items {
                let name = it["metadata"]["name"].as_str().unwrap_or("");
                let item_ns = it["metadata"]["namespace"].as_str().unwrap_or("");
                if let Ok(o) = store.delete_json(&t.gvr, item_ns, name, &opts) {
                    deleted.push(o);
                }
            }
            Ok((200, list_object(&t.gvr, deleted, store.resource_version())))
        }
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource".into(),
        )),
    })();
    match result {
        Ok((code, v)) => json_response(code, &v),
        Err(e) => error_response(&e),
    }
}

fn list_object(gvr: &Gvr, items: Vec<Value>, rv: u64) -> Value {
    json!({
        "apiVersion": gvr.api_version(),
        "kind": format!("{}List", gvr.info().kind),
        "metadata": {"resourceVersion": rv.to_string()},
        "items": items,
    })
}

fn delete_opts(params: &[(String, String)], body: &Bytes) -> Result<DeleteOpts, ApiError> {
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let b: Value = if body.is_empty() {
        json!({})
    } else {
        parse_body(body)?
    };
    let policy = b["propagationPolicy"]
        .as_str()
        .map(str::to_string)
        .or_else(|| param("propagationPolicy"))
        .or_else(|| match b["orphanDependents"].as_bool() {
            Some(true) => Some("Orphan".into()),
            Some(false) => Some("Background".into()),
            None => None,
        });
    let propagation = match policy.as_deref() {
        None => None,
        Some("Orphan") => Some(Propagation::Orphan),
        Some("Background") => Some(Propagation::Background),
        Some("Foreground") => Some(Propagation::Foreground),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "invalid propagationPolicy {other:?}"
            )));
        }
    };
    Ok(DeleteOpts {
        propagation,
        uid: b["preconditions"]["uid"].as_str().map(str::to_string),
        resource_version: b["preconditions"]["resourceVersion"]
            .as_str()
            .map(str::to_string),
    })
}

/// A watch stream: newline-delimited watch events, from the given resourceVersion (or
/// the current objects as ADDED first), until `timeoutSeconds` or the client leaves.
fn watch(shared: &Arc<Shared>, t: &Target, params: &[(String, String)]) -> Response<Body> {
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let labels = match param("labelSelector")
        .as_deref()
        .map(LabelSelector::parse)
        .transpose()
    {
        Ok(l) => l,
        Err(e) => return error_response(&e),
    };
    let fields = match param("fieldSelector")
        .as_deref()
        .map(FieldSelector::parse)
        .transpose()
    {
        Ok(f) => f,
        Err(e) => return error_response(&e),
    };
    let timeout = param("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1800);
    let since = param("resourceVersion")
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|rv| *rv > 0);
    let store = shared.store.clone();
    let gvr = t.gvr.clone();
    let ns = t.namespace.clone();
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        let mut changed = store.subscribe();
        let frame = |v: Value| Ok(Frame::data(Bytes::from(format!("{v}\n"))));
        let wanted = |o: &Value| {
            (ns.is_empty() || o["metadata"]["namespace"].as_str() == Some(ns.as_str()))
                && labels.as_ref().is_none_or(|s| s.matches(o))
                && fields.as_ref().is_none_or(|s| s.matches(o))
        };
        let mut last = match since {
            Some(rv) => rv,
            None => {
                let nsf = (!ns.is_empty()).then_some(ns.as_str());
                let (items, rv) = store.list_at(&gvr, nsf, labels.as_ref(), fields.as_ref());
                for o in items {
                    if tx
                        .send(frame(json!({"type": "ADDED", "object": o})))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                rv
            }
        };
        loop {
            let (changes, complete, now) = store.changes_since(&gvr, last);
            if !complete {
                let status =
                    ApiError::new(410, "Expired", format!("too old resource version: {last}"));
                let _ = tx
                    .send(frame(
                        json!({"type": "ERROR", "object": status.to_status()}),
                    ))
                    .await;
                return;
            }
            for c in changes {
                if wanted(&c.object)
                    && tx
                        .send(frame(json!({"type": c.kind.as_str(), "object": c.object})))
                        .await
                        .is_err()
                {
                    return;
                }
            }
            last = now;
            tokio::select! {
                r = changed.changed() => if r.is_err() { return },
                _ = tokio::time::sleep_until(deadline) => return,
                // Notice a client that went away even when nothing changes.
                _ = tx_closed(&mut tx) => return,
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("transfer-encoding", "chunked")
        .body(BodyExt::boxed(StreamBody::new(rx)))
        .expect("response")
}

async fn tx_closed(tx: &mut futures::channel::mpsc::Sender<Result<Frame<Bytes>, Infallible>>) {
    futures::future::poll_fn(|cx| match tx.poll_ready(cx) {
        std::task::Poll::Ready(Err(_)) => std::task::Poll::Ready(()),
        _ => std::task::Poll::Pending,
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let t = parse_path("/api/v1/namespaces/a/persistentvolumeclaims/data/status").unwrap();
        assert_eq!(
            (
                t.gvr.plural.as_str(),
                t.namespace.as_str(),
                t.name.as_str(),
                t.subresource.as_str()
            ),
            ("persistentvolumeclaims", "a", "data", "status")
        );
        let t = parse_path("/api/v1/namespaces/a").unwrap();
        assert_eq!(
            (t.gvr.plural.as_str(), t.namespace.as_str(), t.name.as_str()),
            ("namespaces", "", "a")
        );
        let t = parse_path("/api/v1/namespaces/a/status").unwrap();
        assert_eq!(
            (
                t.gvr.plural.as_str(),
                t.name.as_str(),
                t.subresource.as_str()
            ),
            ("namespaces", "a", "status")
        );
        let t = parse_path("/apis/batch/v1/namespaces/x/jobs").unwrap();
        assert_eq!(
            (
                t.gvr.group.as_str(),
                t.gvr.plural.as_str(),
                t.namespace.as_str()
            ),
            ("batch", "jobs", "x")
        );
        let t = parse_path("/apis/storage.k8s.io/v1/storageclasses/fast").unwrap();
        assert_eq!(
            (t.gvr.plural.as_str(), t.name.as_str()),
            ("storageclasses", "fast")
        );
        assert!(parse_path("/healthz").is_none());
        assert_eq!(percent_decode("a%3Db%2Cc+in+%28x%29"), "a=b,c in (x)");
    }
}
