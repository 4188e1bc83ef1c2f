//! A real Kubernetes control plane on loopback: etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler, the processes of the multi-call binary
//! that `scripts/build-kube.sh` builds from the Go modules of Kubernetes (testbed/kube).
//!
//! One control plane per test process ([`shared`]), started on first use in a few
//! seconds; each test takes its own namespaces ([`ControlPlane::scope`]). The API
//! server runs the RBAC authorizer and the default admission plugins (PodSecurity and
//! ServiceAccount among them) and issues service-account tokens; the certificates are
//! made for the run. Every component logs to a file of the run's directory; a test
//! that fails prints their tails (the [`Scope`] guard), and the processes end with the
//! test process, however it ends.
//!
//! What is not here: a kubelet and kube-proxy (Service IPs do not
//! route; a process gets the loopback API server's address).

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use ::kube::api::{Api, PostParams};
use ::kube::config::{KubeConfigOptions, Kubeconfig};
use ::kube::{Client, Config};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use serde_json::json;

use crate::free_port;

pub mod install;
pub mod kubelet;
pub mod ops;
pub mod populate;
pub mod scenario;
pub mod storage;

/// How long the control plane may take to become ready (a cold start on a loaded
/// 2-core machine takes about 10 seconds).
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a test waits for the cluster to act.
pub const WAIT: Duration = Duration::from_secs(120);
/// The components, in start order; each is a name of the multi-call binary.
pub const COMPONENTS: [&str; 4] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
];
/// Lines of each component's log printed when a test fails.
const TAIL_LINES: usize = 30;

/// The multi-call binary: `STOWAGE_KUBE_BIN` (set by `scripts/test.sh`), else what
/// `scripts/build-kube.sh` prints (it builds the binary when its cache has none).
pub fn binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("STOWAGE_KUBE_BIN") {
            let p = PathBuf::from(p);
            assert!(
                p.is_file(),
                "STOWAGE_KUBE_BIN={} does not exist: run `bash scripts/build-kube.sh` and \
                 set it to the path it prints",
                p.display()
            );
            return p;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-kube.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed ({}): the tests on a real control plane need it (Go >= 1.26 and the \
             Go module proxy)",
            script.display(),
            out.status
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
    .clone()
}

/// The directory of the third-party CRDs (testbed/kube/crds.txt) that
/// `scripts/build-kube.sh --crds` fetched from their Go modules: `STOWAGE_KUBE_CRDS`
/// (set by `scripts/test.sh`), else what the script prints.
pub fn crds_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(p) = std::env::var_os("STOWAGE_KUBE_CRDS") {
            return PathBuf::from(p);
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-kube.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg("--crds")
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} --crds failed ({})",
            script.display(),
            out.status
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
    .clone()
}

/// The path of one command of the multi-call binary (the symlinks beside it).
pub fn command(name: &str) -> PathBuf {
    binary().with_file_name(name)
}

/// A component process. It runs under a shell that kills it (SIGKILL: an API server
/// whose etcd is gone hangs in its graceful shutdown) when the shell's stdin closes, which happens when the test process exits however it exits; the shell
/// itself exits with the component, so that a crash is seen.
struct Component {
    name: &'static str,
    log: PathBuf,
    child: Child,
    _stdin: ChildStdin,
}

/// Runs `program args` under the keeper shell, its output appended to `log`.
fn keep(name: &'static str, program: &Path, args: &[String], log: PathBuf) -> Component {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#"exec 3<&0; log="$1"; shift; "$@" >>"$log" 2>&1 & p=$!; (trap '' TERM; read _ <&3; kill -9 $p 2>/dev/null) & wait $p"#)
        .arg(name)
        .arg(&log)
        .arg(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    let stdin = child.stdin.take().expect("piped stdin");
    Component {
        name,
        log,
        child,
        _stdin: stdin,
    }
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Certificates and keys of one run, written into its directory.
struct Pki {
    ca: PathBuf,
    ca_key: PathBuf,
    serving_cert: PathBuf,
    serving_key: PathBuf,
    /// The service-account signing key, and its public half that verifies tokens.
    sa_key: PathBuf,
    sa_pub: PathBuf,
}

/// A client certificate for `user` in `groups`, signed by the CA; returns (cert, key).
fn client_cert(
    dir: &Path,
    issuer: &Issuer<'_, KeyPair>,
    file: &str,
    user: &str,
    groups: &[&str],
) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, user);
    for g in groups {
        params.distinguished_name.push(DnType::OrganizationName, *g);
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, issuer).unwrap();
    let (c, k) = (
        dir.join(format!("{file}.crt")),
        dir.join(format!("{file}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

fn pki(dir: &Path) -> (Pki, Issuer<'static, KeyPair>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "stowage test cluster CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let ca = dir.join("ca.crt");
    let ca_key_file = dir.join("ca.key");
    std::fs::write(&ca, ca_cert.pem()).unwrap();
    std::fs::write(&ca_key_file, ca_key.serialize_pem()).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(
        [
            "127.0.0.1",
            "localhost",
            "10.0.0.1",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ]
        .map(String::from)
        .to_vec(),
    )
    .unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    let serving_cert = dir.join("apiserver.crt");
    let serving_key = dir.join("apiserver.key");
    std::fs::write(&serving_cert, cert.pem()).unwrap();
    std::fs::write(&serving_key, key.serialize_pem()).unwrap();

    let (sa_key, sa_pub) = (dir.join("sa.key"), dir.join("sa.pub"));
    let sa = KeyPair::generate().unwrap();
    std::fs::write(&sa_key, sa.serialize_pem()).unwrap();
    // The API server reads public keys only from a file of public keys.
    std::fs::write(&sa_pub, sa.public_key_pem()).unwrap();
    (
        Pki {
            ca,
            ca_key: ca_key_file,
            serving_cert,
            serving_key,
            sa_key,
            sa_pub,
        },
        issuer,
    )
}

/// A kubeconfig for `server` with the CA and a client certificate.
fn write_kubeconfig(path: &Path, server: &str, ca: &Path, user: &str, cert: &Path, key: &Path) {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: stowage-test\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
         users:\n- name: {user}\n  user:\n    client-certificate: {cert}\n    client-key: {key}\n\
         contexts:\n- name: stowage-test\n  context:\n    cluster: stowage-test\n    user: {user}\n\
         current-context: stowage-test\n",
        ca = ca.display(),
        cert = cert.display(),
        key = key.display(),
    );
    std::fs::write(path, text).unwrap();
}

/// The running control plane.
pub struct ControlPlane {
    /// `https://127.0.0.1:<port>` of the API server.
    pub server: String,
    /// The cluster CA (PEM): it signed the API server's certificate.
    pub ca: PathBuf,
    /// A kubeconfig of a cluster administrator (group `system:masters`).
    pub admin_kubeconfig: PathBuf,
    /// The run's directory: certificates, kubeconfigs, etcd's data, `logs/`.
    pub dir: PathBuf,
    logs: PathBuf,
    audit_log: Option<PathBuf>,
    components: Mutex<Vec<Component>>,
    counter: AtomicU32,
    issuer: Mutex<Issuer<'static, KeyPair>>,
    _cleaner: Mutex<(Child, ChildStdin)>,
    _keep: tempfile::TempDir,
}

static SHARED: OnceLock<ControlPlane> = OnceLock::new();

/// The process-wide control plane, started on first use.
pub fn shared() -> &'static ControlPlane {
    SHARED.get_or_init(ControlPlane::start)
}

/// How a control plane differs from the default one of [`ControlPlane::start`].
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The API server writes an audit log (`--audit-policy-file`, `--audit-log-path`):
    /// one JSON line per request at level `Metadata` (who, verb, object, response
    /// code; no bodies) once it is answered, read with [`ControlPlane::audit_events`].
    pub audit: bool,
}

/// The audit policy of [`Options::audit`]: every request at level `Metadata`, once
/// its response is complete (or started, for a watch).
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1\nkind: Policy\n\
                            omitStages: [RequestReceived]\nrules:\n  - level: Metadata\n";

impl ControlPlane {
    /// Starts etcd, the API server, the controller manager and the scheduler, and
    /// returns once each of them reports healthy.
    pub fn start() -> ControlPlane {
        ControlPlane::start_with(&Options::default())
    }

    /// [`ControlPlane::start`] with `options`.
    pub fn start_with(options: &Options) -> ControlPlane {
        let bin = binary();
        let run_dir = tempfile::Builder::new()
            .prefix("stowage-kube-")
            .tempdir()
            .unwrap();
        let dir = run_dir.path().to_path_buf();
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let (pki, issuer) = pki(&dir);
        let (etcd_port, peer_port, api_port, kcm_port, sched_port) = (
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
        );
        let server = format!("https://127.0.0.1:{api_port}");
        let s = |p: &Path| p.display().to_string();

        let kubeconfig = |file: &str, user: &str, groups: &[&str]| {
            let (cert, key) = client_cert(&dir, &issuer, file, user, groups);
            let path = dir.join(format!("{file}.kubeconfig"));
            write_kubeconfig(&path, &server, &pki.ca, user, &cert, &key);
            path
        };
        let admin = kubeconfig("admin", "stowage-test-admin", &["system:masters"]);
        let kcm = kubeconfig("controller-manager", "system:kube-controller-manager", &[]);
        let sched = kubeconfig("scheduler", "system:kube-scheduler", &[]);

        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let args = |a: &[String]| a.to_vec();
        let mut plan: [(&'static str, Vec<String>); 4] = [
            (
                "etcd",
                args(&[
                    "--name=default".into(),
                    format!("--data-dir={}", dir.join("etcd").display()),
                    format!("--listen-client-urls={etcd_url}"),
                    format!("--advertise-client-urls={etcd_url}"),
                    format!("--listen-peer-urls={peer_url}"),
                    format!("--initial-advertise-peer-urls={peer_url}"),
                    format!("--initial-cluster=default={peer_url}"),
                    // A test cluster's etcd need not survive a power cut.
                    "--unsafe-no-fsync".into(),
                    "--log-level=warn".into(),
                ]),
            ),
            (
                "kube-apiserver",
                args(&[
                    format!("--etcd-servers={etcd_url}"),
                    "--bind-address=127.0.0.1".into(),
                    "--advertise-address=127.0.0.1".into(),
                    format!("--secure-port={api_port}"),
                    format!("--cert-dir={}", dir.join("apiserver").display()),
                    format!("--tls-cert-file={}", s(&pki.serving_cert)),
                    format!("--tls-private-key-file={}", s(&pki.serving_key)),
                    format!("--client-ca-file={}", s(&pki.ca)),
                    "--authorization-mode=RBAC".into(),
                    // Published for the other components' delegated authentication
                    // (nothing sends front-proxy headers).
                    format!("--requestheader-client-ca-file={}", s(&pki.ca)),
                    "--requestheader-allowed-names=front-proxy-client".into(),
                    "--requestheader-username-headers=X-Remote-User".into(),
                    "--requestheader-group-headers=X-Remote-Group".into(),
                    "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
                    "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                    format!("--service-account-key-file={}", s(&pki.sa_pub)),
                    format!("--service-account-signing-key-file={}", s(&pki.sa_key)),
                    "--service-cluster-ip-range=10.0.0.0/24".into(),
                    // Endpoints may not point at loopback: there is no `kubernetes`
                    // Service endpoint to keep (processes get the loopback address).
                    "--endpoint-reconciler-type=none".into(),
                    "--profiling=false".into(),
                ]),
            ),
            (
                "kube-controller-manager",
                args(&[
                    format!("--kubeconfig={}", s(&kcm)),
                    format!("--authentication-kubeconfig={}", s(&kcm)),
                    format!("--authorization-kubeconfig={}", s(&kcm)),
                    "--bind-address=127.0.0.1".into(),
                    format!("--secure-port={kcm_port}"),
                    format!("--cert-dir={}", dir.join("controller-manager").display()),
                    "--leader-elect=false".into(),
                    "--use-service-account-credentials=true".into(),
                    format!("--service-account-private-key-file={}", s(&pki.sa_key)),
                    format!("--root-ca-file={}", s(&pki.ca)),
                    format!("--cluster-signing-cert-file={}", s(&pki.ca)),
                    format!("--cluster-signing-key-file={}", s(&pki.ca_key)),
                    // Nodes are the process kubelet's, which renews their Leases.
                    "--controllers=*".into(),
                    "--profiling=false".into(),
                ]),
            ),
            (
                "kube-scheduler",
                args(&[
                    format!("--kubeconfig={}", s(&sched)),
                    format!("--authentication-kubeconfig={}", s(&sched)),
                    format!("--authorization-kubeconfig={}", s(&sched)),
                    "--bind-address=127.0.0.1".into(),
                    format!("--secure-port={sched_port}"),
                    format!("--cert-dir={}", dir.join("scheduler").display()),
                    "--leader-elect=false".into(),
                    "--profiling=false".into(),
                ]),
            ),
        ];
        let audit_log = options.audit.then(|| logs.join("audit.log"));
        if let Some(log) = &audit_log {
            let policy = dir.join("audit-policy.yaml");
            std::fs::write(&policy, AUDIT_POLICY).unwrap();
            plan[1].1.extend([
                format!("--audit-policy-file={}", s(&policy)),
                format!("--audit-log-path={}", s(log)),
                // The request waits for its event to be written: once a program's
                // run is over, every request it made is in the log.
                "--audit-log-mode=blocking".into(),
                "--audit-log-format=json".into(),
            ]);
        }
        // The run's directory goes when the test process exits (the static is never
        // dropped): a shell waits for its stdin to close.
        let mut cleaner = Command::new("sh")
            .arg("-c")
            .arg(r#"trap '' TERM; read _; rm -rf "$0""#)
            .arg(&dir)
            .stdin(Stdio::piped())
            .spawn()
            .expect("start the run directory's cleaner");
        let cleaner_stdin = cleaner.stdin.take().expect("piped stdin");
        let cp = ControlPlane {
            server: server.clone(),
            ca: pki.ca.clone(),
            admin_kubeconfig: admin,
            dir: dir.clone(),
            logs: logs.clone(),
            audit_log,
            components: Mutex::new(Vec::new()),
            _cleaner: Mutex::new((cleaner, cleaner_stdin)),
            counter: AtomicU32::new(0),
            issuer: Mutex::new(issuer),
            _keep: run_dir,
        };
        // Readiness is asked over HTTPS: a runtime of its own, on a thread of its own
        // (the caller may be inside a runtime already).
        let health = [
            format!("{etcd_url}/health"),
            format!("{server}/readyz"),
            format!("https://127.0.0.1:{kcm_port}/healthz"),
            format!("https://127.0.0.1:{sched_port}/healthz"),
        ];
        let deadline = Instant::now() + START_TIMEOUT;
        for ((name, args), url) in plan.into_iter().zip(health) {
            let c = keep(
                name,
                &bin.with_file_name(name),
                &args,
                logs.join(format!("{name}.log")),
            );
            cp.components.lock().unwrap().push(c);
            cp.await_healthy(name, &url, deadline);
        }
        cp
    }

    /// Returns once `url` answers 200, panics with the component's log when the
    /// component exits or the deadline passes.
    fn await_healthy(&self, name: &str, url: &str, deadline: Instant) {
        let admin = self.admin_kubeconfig.clone();
        let url = url.to_string();
        let result = std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let client =
                        health_client(&url, (name == "kube-apiserver").then_some(admin.as_path()))
                            .await;
                    let path = url::path_of(&url);
                    let mut last = String::new();
                    while Instant::now() < deadline {
                        if let Some(exit) = self.exited(name) {
                            return Err(format!("{name} exited ({exit})"));
                        }
                        let req = http::Request::get(path.as_str()).body(Vec::new()).unwrap();
                        match client.request_text(req).await {
                            Ok(_) => return Ok(()),
                            Err(e) => last = e.to_string(),
                        }
                        // Polling a process that is starting: there is no event to await.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(format!(
                        "{name} not healthy after {START_TIMEOUT:?} ({url}: {last})"
                    ))
                })
            })
            .join()
            .expect("health thread")
        });
        if let Err(e) = result {
            panic!("{e}\n{}", self.log_tails());
        }
    }

    /// The exit status of component `name` if it has exited.
    fn exited(&self, name: &str) -> Option<String> {
        let mut cs = self.components.lock().unwrap();
        let c = cs.iter_mut().find(|c| c.name == name)?;
        c.child.try_wait().ok().flatten().map(|s| s.to_string())
    }

    /// The tails of every component's log, for a failing test.
    pub fn log_tails(&self) -> String {
        let cs = self.components.lock().unwrap();
        let mut out = String::new();
        for c in cs.iter() {
            out.push_str(&format!(
                "----- {} (last {TAIL_LINES} lines of {}) -----\n{}\n",
                c.name,
                c.log.display(),
                tail(&c.log, TAIL_LINES)
            ));
        }
        out
    }

    /// The directory of the components' logs.
    pub fn logs(&self) -> &Path {
        &self.logs
    }

    /// The API server's audit events so far (`audit.k8s.io/v1` Event objects, in the
    /// order written); panics when the control plane was started without
    /// [`Options::audit`].
    pub fn audit_events(&self) -> Vec<serde_json::Value> {
        let log = self
            .audit_log
            .as_ref()
            .expect("this control plane was started without an audit log (Options::audit)");
        let text = std::fs::read_to_string(log).unwrap_or_default();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?}: {e}")))
            .collect()
    }

    /// A client of a cluster administrator, for the caller's runtime.
    pub async fn client(&self) -> Client {
        client_from(&self.admin_kubeconfig).await
    }

    /// A kubeconfig for `user` in `groups` (a client certificate of the cluster CA):
    /// what the real authorizer decides for that user is what a test measures.
    pub fn kubeconfig_for(&self, user: &str, groups: &[&str]) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let file = format!("user-{n}");
        let issuer = self.issuer.lock().unwrap();
        let (cert, key) = client_cert(&self.dir, &issuer, &file, user, groups);
        let path = self.dir.join(format!("{file}.kubeconfig"));
        write_kubeconfig(&path, &self.server, &self.ca, user, &cert, &key);
        path
    }

    /// A fresh namespace name starting with `hint`, unique in this control plane.
    pub fn unique_name(&self, hint: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{hint}-{n}")
    }

    /// A test's share of the cluster: namespaces named after `hint`; prints the
    /// components' logs if the test fails.
    pub fn scope(&'static self, hint: &str) -> Scope {
        Scope {
            cp: self,
            hint: hint.to_string(),
        }
    }
}

impl ControlPlane {
    /// Stops every component (last started first), as a cluster that is destroyed:
    /// its API server and etcd are gone; a control plane that lives for the rest of
    /// the process (a `'static` one) ends this way.
    pub fn stop(&self) {
        // Closing the keeper shells' stdin ends the components.
        let mut cs = self.components.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(mut c) = cs.pop() {
            drop(c._stdin);
            let _ = c.child.wait();
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A test's share of the shared control plane.
pub struct Scope {
    pub cp: &'static ControlPlane,
    hint: String,
}

impl Scope {
    /// Creates a namespace `<hint>-<n>` with `labels` and returns its name once its
    /// `default` ServiceAccount exists (before that, the ServiceAccount admission
    /// plugin refuses its pods).
    pub async fn namespace(&self, client: &Client, labels: &[(&str, &str)]) -> String {
        let name = self.cp.unique_name(&self.hint);
        let labels: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels}
        }))
        .unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        let sas = Api::<ServiceAccount>::namespaced(client.clone(), &name);
        let cond =
            ::kube::runtime::wait::await_condition(sas, "default", |sa: Option<&_>| sa.is_some());
        tokio::time::timeout(WAIT, cond)
            .await
            .unwrap_or_else(|_| panic!("no default ServiceAccount in {name} after {WAIT:?}"))
            .expect("watch serviceaccounts");
        name
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "control plane logs ({}):\n{}",
                self.cp.logs.display(),
                self.cp.log_tails()
            );
        }
    }
}

/// A client from a kubeconfig file.
pub async fn client_from(kubeconfig: &Path) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    Client::try_from(config).expect("client")
}

/// A client for a health endpoint: the API server's with the admin's credentials,
/// the others' (self-signed, no authentication needed for their health) without.
async fn health_client(url: &str, admin: Option<&Path>) -> Client {
    let base = url::base_of(url);
    let mut config = if let Some(admin) = admin {
        let kc = Kubeconfig::read_from(admin).expect("read kubeconfig");
        Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("kubeconfig")
    } else {
        let mut c = Config::new(base.parse().expect("url"));
        c.accept_invalid_certs = base.starts_with("https://");
        c
    };
    config.connect_timeout = Some(Duration::from_secs(2));
    config.read_timeout = Some(Duration::from_secs(5));
    Client::try_from(config).expect("client")
}

mod url {
    /// `scheme://host:port` of a URL.
    pub fn base_of(url: &str) -> String {
        let after = url.find("://").map_or(0, |i| i + 3);
        match url[after..].find('/') {
            Some(i) => url[..after + i].to_string(),
            None => url.to_string(),
        }
    }

    /// The path of a URL (`/` when it has none).
    pub fn path_of(url: &str) -> String {
        let base = base_of(url);
        match &url[base.len()..] {
            "" => "/".to_string(),
            p => p.to_string(),
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn splits_base_and_path() {
            assert_eq!(
                super::base_of("https://127.0.0.1:6443/readyz"),
                "https://127.0.0.1:6443"
            );
            assert_eq!(super::path_of("https://127.0.0.1:6443/readyz"), "/readyz");
            assert_eq!(super::path_of("http://127.0.0.1:1"), "/");
        }
    }
}

/// The control plane with nodes, a process kubelet and node-local storage: what the
/// end-to-end scenarios run in.
pub struct Cluster {
    pub cp: &'static ControlPlane,
    pub kubelet: kubelet::Kubelet,
    pub storage: storage::Provisioner,
}

/// The nodes of [`cluster`].
pub const NODES: [&str; 2] = ["node-a", "node-b"];
/// The default StorageClass of [`cluster`] (node-local, WaitForFirstConsumer).
pub const LOCAL_CLASS: &str = "local";

/// The process-wide cluster, started on first use: [`shared`]'s control plane, the
/// nodes [`NODES`] served by the process kubelet running the workspace's binaries for
/// the shipped images, and the default class [`LOCAL_CLASS`].
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| Cluster::start(shared()))
}

impl Cluster {
    /// What [`cluster`] starts, on the control plane `cp` (a test's own, for example
    /// one with an audit log).
    pub fn start(cp: &'static ControlPlane) -> Cluster {
        let binaries = kubelet::shipped_images()
            .into_iter()
            .map(|(image, bin)| (image, crate::bins::path(&bin)))
            .collect();
        let nodes = NODES.iter().map(|n| kubelet::NodeSpec::new(n)).collect();
        let kubelet = kubelet::Kubelet::start(cp, nodes, binaries);
        let storage = storage::Provisioner::start(
            cp,
            NODES[0],
            vec![storage::storage_class(LOCAL_CLASS, true, false)],
        );
        Cluster {
            cp,
            kubelet,
            storage,
        }
    }
}
