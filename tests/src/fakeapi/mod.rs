//! A stateful fake Kubernetes API server: a real HTTP server on loopback that the real
//! `kube` client (in-process, or in a program under test through a kubeconfig file)
//! talks to, generic over resource types, with the API server's semantics where the
//! programs depend on them (see [`store`]), an audit log of every request (to check
//! RBAC rules against the calls programs really make) and fault injection.
//!
//! ```no_run
//! # async fn demo() {
//! use stowage_testkit::fakeapi::{FakeApi, Fault};
//! let fake = FakeApi::start();
//! let kubeconfig = fake.kubeconfig_for("system:serviceaccount:stowage:stowage-scheduler");
//! fake.inject(Fault::forbidden().verb("list").resource("persistentvolumeclaims"));
//! let client = fake.client_for("tester"); // needs a tokio runtime
//! # }
//! ```
//!
//! The server runs on a runtime of its own (a thread), so it works from `#[test]` and
//! `#[tokio::test]` alike and keeps serving while a test blocks on a subprocess.

pub mod exec;
pub mod resources;
pub mod selector;
mod server;
pub mod store;

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};

pub use resources::Gvr;
pub use store::{DeleteOpts, PatchBody, Propagation, Store};

/// An API error, answered as a Kubernetes `Status` object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// `NotFound`, `AlreadyExists`, `Conflict`, `Forbidden`, `Invalid`, `BadRequest`,
    /// `InternalError`, ...
    pub reason: String,
    /// Human-readable message, in the API server's wording.
    pub message: String,
}

impl ApiError {
    /// Any error.
    pub fn new(code: u16, reason: &str, message: String) -> Self {
        ApiError {
            code,
            reason: reason.to_string(),
            message,
        }
    }

    /// 404 `plural "name" not found`.
    pub fn not_found(gvr: &Gvr, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", gvr.qualified()),
        )
    }

    /// 409 `plural "name" already exists`.
    pub fn already_exists(gvr: &Gvr, _kind: &str, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", gvr.qualified()),
        )
    }

    /// 409 Conflict on a stale resourceVersion.
    pub fn conflict(gvr: &Gvr, name: &str) -> Self {
        Self::conflict_msg(
            gvr,
            name,
            "the object has been modified; please apply your changes to the latest version and try again".into(),
        )
    }

    /// 409 Conflict with a specific cause.
    pub fn conflict_msg(gvr: &Gvr, name: &str, cause: String) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {cause}",
                gvr.qualified()
            ),
        )
    }

    /// 400 BadRequest.
    pub fn bad_request(message: String) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 422 Invalid.
    pub fn invalid(_gvr: &Gvr, kind: &str, name: &str, cause: &str) -> Self {
        Self::new(
            422,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: {cause}"),
        )
    }

    /// 403 Forbidden.
    pub fn forbidden(message: String) -> Self {
        Self::new(403, "Forbidden", message)
    }

    /// 500 InternalError.
    pub fn internal(message: String) -> Self {
        Self::new(500, "InternalError", message)
    }

    /// The `Status` object the API server answers with.
    pub fn to_status(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        })
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

/// One request as the audit log saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    /// The bearer token of the request (`system:anonymous` without one).
    pub user: String,
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`.
    pub verb: String,
    /// API group, `""` for core.
    pub group: String,
    /// API version.
    pub version: String,
    /// Plural resource name.
    pub resource: String,
    /// Subresource (`status`), or `""`.
    pub subresource: String,
    /// Namespace of the request, or `""`.
    pub namespace: String,
    /// Object name, or `""` (list, create).
    pub name: String,
    /// HTTP status code of the answer.
    pub code: u16,
}

/// A distinct kind of access, what an RBAC rule grants.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Access {
    /// Who.
    pub user: String,
    /// RBAC verb.
    pub verb: String,
    /// API group.
    pub group: String,
    /// Plural resource.
    pub resource: String,
    /// Subresource or `""`.
    pub subresource: String,
}

/// What an injected fault does.
#[derive(Clone, Debug)]
pub enum FaultAction {
    /// 403 with the API server's RBAC message for the request.
    Forbidden,
    /// Any error answer.
    Error(ApiError),
    /// Waits, then handles the request normally.
    Delay(Duration),
    /// Holds the request until the test decides (see [`crate::gate`]): released, it is
    /// handled normally; dropped, it is answered 503 without being executed.
    Hold(Arc<crate::gate::Gate>),
}

/// A fault rule: which requests it matches (unset fields match anything), what it
/// does, and how many times (`None`: always).
#[derive(Clone, Debug)]
pub struct Fault {
    /// Bearer token of the request.
    pub user: Option<String>,
    /// Audit verb (`list`, `create`...).
    pub verb: Option<String>,
    /// API group.
    pub group: Option<String>,
    /// Plural resource.
    pub resource: Option<String>,
    /// Subresource (`status`); `Some("")` matches only the main resource.
    pub subresource: Option<String>,
    /// Namespace.
    pub namespace: Option<String>,
    /// Object name.
    pub name: Option<String>,
    /// What happens.
    pub action: FaultAction,
    /// How many more matching requests it applies to; `None`: all.
    pub times: Option<usize>,
}

impl Fault {
    fn with(action: FaultAction) -> Self {
        Fault {
            user: None,
            verb: None,
            group: None,
            resource: None,
            subresource: None,
            namespace: None,
            name: None,
            action,
            times: None,
        }
    }

    /// 403 Forbidden in RBAC's words (`pods is forbidden: User "x" cannot list ...`).
    pub fn forbidden() -> Self {
        Self::with(FaultAction::Forbidden)
    }

    /// An error answer: `Fault::error(500, "InternalError", "etcdserver: request timed out")`.
    pub fn error(code: u16, reason: &str, message: &str) -> Self {
        Self::with(FaultAction::Error(ApiError::new(
            code,
            reason,
            message.to_string(),
        )))
    }

    /// A delayed answer.
    pub fn delay(d: Duration) -> Self {
        Self::with(FaultAction::Delay(d))
    }

    /// Holds matching requests until the returned [`Pause`](crate::gate::Pause) decides:
    /// a test waits for the program's request, SIGKILLs the program, drops the pause
    /// (the request is never executed): a kill point just before that call.
    pub fn hold() -> (Self, crate::gate::Pause) {
        let gate = crate::gate::Gate::new();
        (
            Self::with(FaultAction::Hold(gate.clone())),
            crate::gate::Pause::new(gate),
        )
    }

    /// Only requests of this user (bearer token).
    pub fn user(mut self, u: &str) -> Self {
        self.user = Some(u.into());
        self
    }

    /// Only this verb.
    pub fn verb(mut self, v: &str) -> Self {
        self.verb = Some(v.into());
        self
    }

    /// Only this API group.
    pub fn group(mut self, g: &str) -> Self {
        self.group = Some(g.into());
        self
    }

    /// Only this plural resource.
    pub fn resource(mut self, r: &str) -> Self {
        self.resource = Some(r.into());
        self
    }

    /// Only this subresource (`""`: only the main resource).
    pub fn subresource(mut self, s: &str) -> Self {
        self.subresource = Some(s.into());
        self
    }

    /// Only this namespace.
    pub fn namespace(mut self, n: &str) -> Self {
        self.namespace = Some(n.into());
        self
    }

    /// Only this object name.
    pub fn name(mut self, n: &str) -> Self {
        self.name = Some(n.into());
        self
    }

    /// Only the next `n` matching requests.
    pub fn times(mut self, n: usize) -> Self {
        self.times = Some(n);
        self
    }

    fn matches(&self, r: &AuditRecord) -> bool {
        let m = |f: &Option<String>, v: &str| f.as_deref().is_none_or(|f| f == v);
        m(&self.user, &r.user)
            && m(&self.verb, &r.verb)
            && m(&self.group, &r.group)
            && m(&self.resource, &r.resource)
            && m(&self.subresource, &r.subresource)
            && m(&self.namespace, &r.namespace)
            && m(&self.name, &r.name)
    }
}

/// The API server's RBAC denial message for a request.
pub fn forbidden_message(r: &AuditRecord) -> String {
    let gvr = Gvr::new(&r.group, &r.version, &r.resource);
    let what = if r.name.is_empty() {
        gvr.qualified()
    } else {
        format!("{} \"{}\"", gvr.qualified(), r.name)
    };
    let resource = if r.subresource.is_empty() {
        r.resource.clone()
    } else {
        format!("{}/{}", r.resource, r.subresource)
    };
    let scope = if r.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace \"{}\"", r.namespace)
    };
    format!(
        "{what} is forbidden: User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
        r.user, r.verb, r.group
    )
}

/// Writes `dir/kubeconfig-<user>.yaml` for server `url` and bearer token `user`.
pub(crate) fn write_kubeconfig(url: &str, dir: &std::path::Path, user: &str) -> PathBuf {
    let safe: String = user
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let path = dir.join(format!("kubeconfig-{safe}.yaml"));
    // JSON strings are valid YAML scalars, whatever the user name holds.
    let token = serde_json::to_string(user).expect("string");
    let text = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: {url}
contexts:
- name: fake
  context:
    cluster: fake
    user: fake-user
    namespace: default
current-context: fake
users:
- name: fake-user
  user:
    token: {token}
"
    );
    std::fs::write(&path, text).expect("write kubeconfig");
    path
}

/// State shared by the server tasks and the handle.
pub(crate) struct Shared {
    pub store: Arc<Store>,
    pub audit: Mutex<Vec<AuditRecord>>,
    pub faults: Mutex<Vec<Fault>>,
    /// Runs `pods/exec` requests (exec.rs); None: every exec fails.
    pub exec: Mutex<Option<exec::ExecHandler>>,
}

impl Shared {
    /// The action of the first matching fault, consuming one of its uses.
    pub(crate) fn take_fault(&self, r: &AuditRecord) -> Option<FaultAction> {
        let mut faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        let i = faults.iter().position(|f| f.matches(r))?;
        let action = faults[i].action.clone();
        if let Some(n) = &mut faults[i].times {
            *n -= 1;
            if *n == 0 {
                faults.remove(i);
            }
        }
        Some(action)
    }
}

/// The running fake API server. Dropping it stops the server (and every task spawned
/// on its runtime, such as the simulator's).
pub struct FakeApi {
    shared: Arc<Shared>,
    port: u16,
    handle: tokio::runtime::Handle,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    dir: tempfile::TempDir,
}

impl FakeApi {
    /// Starts a server on `127.0.0.1` with a random port, on a runtime thread of its own.
    pub fn start() -> FakeApi {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("local addr").port();
        let shared = Arc::new(Shared {
            store: Arc::new(Store::default()),
            audit: Mutex::new(Vec::new()),
            faults: Mutex::new(Vec::new()),
            exec: Mutex::new(None),
        });
        let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel();
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let server_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("fakeapi".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("fake API runtime");
                handle_tx.send(rt.handle().clone()).expect("handle");
                rt.block_on(server::serve(listener, server_shared, shutdown_rx));
                rt.shutdown_timeout(Duration::from_secs(5));
            })
            .expect("spawn fake API thread");
        let handle = handle_rx.recv().expect("fake API runtime started");
        FakeApi {
            shared,
            port,
            handle,
            shutdown: Some(shutdown),
            thread: Some(thread),
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The object store (direct access: not audited, no faults).
    pub fn store(&self) -> &Arc<Store> {
        &self.shared.store
    }

    /// Creates the object `v` (JSON of a `K`) directly in the store, as a test's
    /// set-up does; panics on an invalid object or a conflict.
    pub fn put<K>(&self, v: Value) -> K
    where
        K: k8s_openapi::Resource + Serialize + serde::de::DeserializeOwned,
    {
        self.store().create::<K>(&crate::obj::<K>(v)).unwrap()
    }

    /// The server's runtime, for tasks that must outlive a test's runtime.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    /// Writes a kubeconfig file whose user authenticates with the bearer token `user`
    /// (the identity in the audit log) and returns its path.
    pub fn kubeconfig_for(&self, user: &str) -> PathBuf {
        write_kubeconfig(&self.url(), self.dir.path(), user)
    }

    /// A `kube::Client` authenticated as `user`. Must be called within a tokio runtime
    /// (the client spawns a task).
    pub fn client_for(&self, user: &str) -> kube::Client {
        let mut config = kube::Config::new(self.url().parse().expect("url"));
        config.headers.push((
            http::header::AUTHORIZATION,
            format!("Bearer {user}").parse().expect("header value"),
        ));
        // Faults are injected on purpose: the client must see them, not retry them.
        config.default_retry = false;
        kube::Client::try_from(config).expect("kube client")
    }

    /// A snapshot of the audit log.
    pub fn requests(&self) -> Vec<AuditRecord> {
        self.shared
            .audit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Empties the audit log.
    pub fn clear_requests(&self) {
        self.shared
            .audit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// The distinct (user, verb, group, resource, subresource) of the audit log: what
    /// RBAC rules must grant.
    pub fn accesses(&self) -> BTreeSet<Access> {
        self.requests()
            .into_iter()
            .map(|r| Access {
                user: r.user,
                verb: r.verb,
                group: r.group,
                resource: r.resource,
                subresource: r.subresource,
            })
            .collect()
    }

    /// Adds a fault rule (rules are tried in insertion order).
    pub fn inject(&self, fault: Fault) {
        self.shared
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(fault);
    }

    /// Removes every fault rule.
    pub fn clear_faults(&self) {
        self.shared
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Sets what runs `pods/exec` requests (the simulator runs them as local processes).
    pub fn set_exec_handler(&self, handler: exec::ExecHandler) {
        *self.shared.exec.lock().unwrap_or_else(|e| e.into_inner()) = Some(handler);
    }

    /// Removes every object (a cluster rebuild). Audit log and faults are kept.
    pub fn wipe(&self) {
        self.store().wipe();
    }

    /// Every object, for debugging output.
    pub fn snapshot_json(&self) -> Value {
        self.store().snapshot_json()
    }

    /// Keeps a deleted namespace observable in its Terminating state.
    pub fn hold_namespace_deletion(&self, ns: &str) {
        self.store().hold_namespace_deletion(ns);
    }

    /// Lets a held namespace deletion complete.
    pub fn release_namespace_deletion(&self, ns: &str) {
        self.store().release_namespace_deletion(ns);
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
