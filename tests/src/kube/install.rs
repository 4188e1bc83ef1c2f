//! Installing what users install, the way Flux installs it: rendered by Flux's own
//! code (`testbed/flux`: kustomize-controller's generator, `SecureBuild` and
//! `SubstituteVariables` for `postBuild.substitute`, the normalization before its
//! apply), then a server-side apply to the real API server (CustomResourceDefinitions
//! and Namespaces first, once established the rest).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use super::{ControlPlane, command};

/// Flux's annotation that exempts an object from `postBuild.substitute`.
pub const SUBSTITUTE_ANNOTATION: &str = "kustomize.toolkit.fluxcd.io/substitute";
/// The field manager of the applies (Flux's is `kustomize-controller`).
pub const FIELD_MANAGER: &str = "kustomize-controller";

/// The CustomResourceDefinition of the volume-data-source-validator's VolumePopulator
/// (`populator.storage.k8s.io/v1beta1`), written after its published API: the Go
/// module proxy does not serve that project.
pub const VOLUME_POPULATOR_CRD: &str = include_str!("crds/volumepopulators.yaml");

/// The third-party CustomResourceDefinitions stowage's components use: those of
/// [`super::crds_dir`] (PrometheusRule, Kyverno's ClusterPolicy) and the
/// VolumePopulator.
pub fn third_party_crds() -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(super::crds_dir())
        .expect("the CRD directory of scripts/build-kube.sh --crds")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut out: Vec<Value> = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for doc in split_documents(&text) {
            out.push(serde_saphyr::from_str(doc).expect("CRD YAML"));
        }
    }
    for doc in split_documents(VOLUME_POPULATOR_CRD) {
        out.push(serde_saphyr::from_str(doc).expect("CRD YAML"));
    }
    out
}

/// The variables the example Flux Kustomization (`kustomize/examples/flux/ks.yaml`)
/// sets for the app in `postBuild.substitute`: what a user sets.
pub fn example_substitute() -> BTreeMap<String, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kustomize/examples/flux/ks.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    for doc in split_documents(&text) {
        let obj: Value = serde_saphyr::from_str(doc).expect("ks.yaml");
        if obj["kind"] == "Kustomization" && obj["spec"]["path"] == "./kustomize/app" {
            let subst = obj["spec"]["postBuild"]["substitute"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            return subst
                .into_iter()
                .map(|(k, v)| (k, v.as_str().map(String::from).unwrap_or(v.to_string())))
                .collect();
        }
    }
    panic!("{} has no Kustomization of ./kustomize/app", path.display())
}

/// Runs the real kubectl with `args` (and `stdin`) as the cluster administrator.
pub fn kubectl(cp: &ControlPlane, args: &[&str], stdin: Option<&[u8]>) -> Output {
    kubectl_as(&cp.admin_kubeconfig, args, stdin)
}

/// Runs the real kubectl with `args` (and `stdin`) with `kubeconfig`.
pub fn kubectl_as(kubeconfig: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(command("kubectl"))
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("write kubectl's stdin");
    }
    child.wait_with_output().expect("kubectl")
}

/// The Flux renderer of `testbed/flux` (kustomize-controller's build and
/// `postBuild.substitute`, Flux's own Go code): `STOWAGE_FLUX_BIN` (set by
/// `scripts/test.sh`), else what `scripts/build-flux.sh` prints (it builds the binary
/// when its cache has none). There is no other renderer: without it the tests fail.
pub fn flux_renderer() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("STOWAGE_FLUX_BIN") {
            let p = PathBuf::from(p);
            assert!(
                p.is_file(),
                "STOWAGE_FLUX_BIN={} does not exist: run `bash scripts/build-flux.sh` and \
                 set it to the path it prints",
                p.display()
            );
            return p;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-flux.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed ({}): the shipped kustomizations are rendered with Flux's own code, \
             built from Go modules (Go >= 1.26 and the Go module proxy)",
            script.display(),
            out.status
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
    .clone()
}

/// What Flux's kustomize-controller sends to the API server for a Flux Kustomization
/// with `spec` whose `spec.path` is relative to `root` (the source's root): the
/// kustomization generated from the spec, the build confined to `root`,
/// `postBuild.substitute` on every object not annotated
/// `kustomize.toolkit.fluxcd.io/substitute: disabled`, and the apply's normalization
/// (`testbed/flux/main.go`). Returns the renderer's error text when Flux would fail.
pub fn flux_render(root: &Path, spec: &Value) -> Result<Vec<Value>, String> {
    flux_render_with(root, spec, false)
}

/// [`flux_render`] as a kustomize-controller with the feature gate
/// `StrictPostBuildSubstitutions` renders: a variable without a default that
/// `postBuild.substitute` does not set fails the build (instead of rendering empty).
pub fn flux_render_strict(root: &Path, spec: &Value) -> Result<Vec<Value>, String> {
    flux_render_with(root, spec, true)
}

fn flux_render_with(root: &Path, spec: &Value, strict: bool) -> Result<Vec<Value>, String> {
    let ks = serde_json::json!({
        "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
        "kind": "Kustomization",
        "metadata": {"name": "stowage", "namespace": "flux-system"},
        "spec": spec,
    });
    let file = tempfile::NamedTempFile::new().expect("temporary file");
    std::fs::write(file.path(), serde_json::to_vec(&ks).unwrap()).expect("write ks.yaml");
    let bin = flux_renderer();
    let out = Command::new(&bin)
        .arg("build")
        .arg(format!("--root={}", root.display()))
        .arg(format!("--kustomization={}", file.path().display()))
        .args(strict.then_some("--strict"))
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    if !out.status.success() {
        return Err(format!(
            "Flux's build of {} (spec.path {}): {}",
            root.display(),
            spec["path"],
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8(out.stdout).expect("utf-8 YAML");
    split_documents(&text)
        .into_iter()
        .map(|doc| serde_saphyr::from_str(doc).map_err(|e| format!("Flux's YAML: {e}")))
        .collect()
}

/// The documents of a multi-document YAML stream (separated by `---` lines).
pub fn split_documents(yaml: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut pos = 0;
    for line in yaml.split_inclusive('\n') {
        if line.trim_end() == "---" {
            docs.push(&yaml[start..pos]);
            start = pos + line.len();
        }
        pos += line.len();
    }
    docs.push(&yaml[start..]);
    docs.into_iter()
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.starts_with('#'))
        })
        .collect()
}

/// `kind/name` (and namespace) of an object, for messages.
pub fn describe(obj: &Value) -> String {
    let ns = obj["metadata"]["namespace"].as_str();
    format!(
        "{}/{}{}",
        obj["kind"].as_str().unwrap_or("?"),
        obj["metadata"]["name"].as_str().unwrap_or("?"),
        ns.map(|n| format!(" in {n}")).unwrap_or_default()
    )
}

/// Objects that must exist before the others can be applied.
fn is_foundation(obj: &Value) -> bool {
    matches!(
        obj["kind"].as_str(),
        Some("CustomResourceDefinition" | "Namespace")
    )
}

/// Server-side applies `objects` as Flux does: CustomResourceDefinitions and
/// Namespaces first, waits until the definitions are established, then the rest.
/// Returns kubectl's error text when the API server refused something.
pub fn apply(cp: &ControlPlane, objects: &[Value]) -> Result<(), String> {
    apply_with(cp, objects, false)
}

/// [`apply`], with the objects other than CustomResourceDefinitions and Namespaces
/// only checked by the API server (`--dry-run=server`) when `dry_run`: admission and
/// validation run, nothing is stored.
pub fn apply_with(cp: &ControlPlane, objects: &[Value], dry_run: bool) -> Result<(), String> {
    let (first, rest): (Vec<&Value>, Vec<&Value>) = objects.iter().partition(|o| is_foundation(o));
    for (stage, objs) in [("definitions", first), ("objects", rest)] {
        if objs.is_empty() {
            continue;
        }
        let list = serde_json::to_vec(&serde_json::json!({
            "apiVersion": "v1", "kind": "List", "items": objs,
        }))
        .unwrap();
        let manager = format!("--field-manager={FIELD_MANAGER}");
        let mut args = vec!["apply", "--server-side", "--force-conflicts", &manager];
        if dry_run && stage == "objects" {
            args.push("--dry-run=server");
        }
        args.extend(["-f", "-"]);
        let out = kubectl(cp, &args, Some(&list));
        if !out.status.success() {
            return Err(format!(
                "server-side apply of the {stage} refused: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let crds: Vec<String> = objs
            .iter()
            .filter(|o| o["kind"] == "CustomResourceDefinition")
            .map(|o| format!("crd/{}", o["metadata"]["name"].as_str().unwrap_or("")))
            .collect();
        if !crds.is_empty() {
            let mut args = vec!["wait", "--for=condition=Established", "--timeout=60s"];
            args.extend(crds.iter().map(String::as_str));
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            let out = loop {
                let out = kubectl(cp, &args, None);
                // kubectl wait fails at once on a definition whose status has no
                // conditions yet (just created): ask again.
                let early = String::from_utf8_lossy(&out.stderr).contains("accessor error");
                if out.status.success() || !early || std::time::Instant::now() > deadline {
                    break out;
                }
            };
            if !out.status.success() {
                return Err(format!(
                    "CustomResourceDefinitions not established: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
    }
    Ok(())
}

/// A copy of the repository's `kustomize/` in a temporary directory, where test
/// kustomizations can refer to it with relative paths (kustomize's load restrictor).
pub struct KustomizeTree {
    dir: tempfile::TempDir,
}

impl KustomizeTree {
    pub fn copy() -> KustomizeTree {
        let dir = tempfile::tempdir().unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kustomize");
        copy_dir(&src, &dir.path().join("kustomize")).expect("copy kustomize/");
        KustomizeTree { dir }
    }

    /// `kustomize/` in the copy.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("kustomize")
    }

    /// Writes a kustomization `kustomize/rendered/<name>/kustomization.yaml` with
    /// `body` (paths relative to it: `../../app`) and returns its directory.
    pub fn kustomization(&self, name: &str, body: &str) -> PathBuf {
        let d = self.root().join("rendered").join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("kustomization.yaml"),
            format!("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n{body}"),
        )
        .unwrap();
        d
    }

    /// [`flux_render`] of the kustomization directory `dir` of this tree with
    /// `postBuild.substitute` set to `vars`, as a Flux Kustomization whose source is
    /// the tree and whose `spec.path` is `dir`.
    pub fn flux_build(
        &self,
        dir: &Path,
        vars: &BTreeMap<String, String>,
    ) -> Result<Vec<Value>, String> {
        let path = dir
            .strip_prefix(self.dir.path())
            .unwrap_or_else(|_| panic!("{} is not in the tree", dir.display()));
        flux_render(
            self.dir.path(),
            &serde_json::json!({
                "path": format!("./{}", path.display()),
                "prune": true,
                "postBuild": {"substitute": vars},
            }),
        )
    }

    /// The names of the components in `kustomize/components/`.
    pub fn components(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.root().join("components"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

fn copy_dir(src: &Path, dst: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dst)?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let to = dst.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &to)?;
        } else {
            std::fs::copy(entry.path(), to)?;
        }
    }
    Ok(())
}

/// The ServiceAccount subjects of the rendered bindings that name no ServiceAccount of
/// the rendering (`kind/name: subject ns/name`): what breaks when the app is rendered
/// into another namespace and a binding still names the old one.
pub fn dangling_subjects(objects: &[Value]) -> Vec<String> {
    let accounts: Vec<(String, String)> = objects
        .iter()
        .filter(|o| o["kind"] == "ServiceAccount")
        .map(|o| {
            (
                o["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                o["metadata"]["name"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let mut out = Vec::new();
    for o in objects.iter().filter(|o| {
        matches!(
            o["kind"].as_str(),
            Some("RoleBinding" | "ClusterRoleBinding")
        )
    }) {
        for s in o["subjects"].as_array().into_iter().flatten() {
            if s["kind"] != "ServiceAccount" {
                continue;
            }
            let key = (
                s["namespace"].as_str().unwrap_or("").to_string(),
                s["name"].as_str().unwrap_or("").to_string(),
            );
            let own_name = accounts.iter().any(|(_, n)| *n == key.1);
            if own_name && !accounts.contains(&key) {
                out.push(format!(
                    "{}: subject ServiceAccount {}/{}",
                    describe(o),
                    key.0,
                    key.1
                ));
            }
        }
    }
    out
}

/// The install every scenario of a test process shares: the app with every component
/// but the app-namespace one, in `stowage`, with Garage as the S3 storage.
pub struct Stowage {
    /// The bucket of the repositories (in the shared Garage).
    pub bucket: String,
    /// `postBuild.substitute` as the test's Flux Kustomization sets it.
    pub vars: BTreeMap<String, String>,
    /// Every object applied.
    pub objects: Vec<Value>,
    /// The master password in the credentials Secret.
    pub master: String,
    /// The private CA the S3 endpoint's certificate is signed by (`custom-ca`).
    pub ca_bundle: Option<PathBuf>,
    /// The namespace the app was rendered into.
    pub namespace: String,
}

impl Stowage {
    /// The S3 endpoint the programs use (`STOWAGE_S3_ENDPOINT`).
    pub fn endpoint(&self) -> &str {
        &self.vars["STOWAGE_S3_ENDPOINT"]
    }
}

/// The components the shared install uses: all but `mover-network-policy` (it goes into
/// an app's namespace), `no-monitoring` (the PrometheusRule CRD is installed) and
/// `custom-ca` (it mounts the user's CA ConfigMap, which an S3 over plain http has
/// none of). The last two are installed by [`Options::components`] in
/// `tests/tests/kube/populate.rs::a_private_ca_endpoint_without_the_prometheus_operator_in_another_namespace`.
pub fn app_components(tree: &KustomizeTree) -> Vec<String> {
    tree.components()
        .into_iter()
        .filter(|c| {
            !matches!(
                c.as_str(),
                "mover-network-policy" | "no-monitoring" | "custom-ca"
            )
        })
        .collect()
}

/// The test's Flux Kustomization of the app: `components` and what a user with a LAN
/// S3 over plain http sets (a patch of `stowage-settings`). The CronJobs are
/// suspended: a scenario starts each run itself with `kubectl create job --from`, so
/// that the real CronJob controller's minute ticks do not race it.
pub fn app_kustomization(components: &[String]) -> String {
    let list: String = components
        .iter()
        .map(|c| format!("  - ../../components/{c}\n"))
        .collect();
    format!(
        "resources: [../../app]\ncomponents:\n{list}patches:\n\
         - target: {{kind: ConfigMap, name: stowage-settings}}\n  patch: |\n    - op: replace\n      path: /data/STOWAGE_ALLOW_HTTP\n      value: \"true\"\n\
         - target: {{kind: CronJob}}\n  patch: |\n    - op: replace\n      path: /spec/suspend\n      value: true\n"
    )
}

/// Installs [`Stowage`] once per test process (and the third-party CRDs), with the
/// user's credentials Secret.
pub fn stowage(cp: &'static ControlPlane) -> &'static Stowage {
    static INSTALLED: std::sync::OnceLock<Stowage> = std::sync::OnceLock::new();
    INSTALLED.get_or_init(|| stowage_with(cp, &Options::default()))
}

/// What an install of [`stowage_with`] differs in.
#[derive(Clone, Debug)]
pub struct Options {
    /// The bucket (in the shared Garage); `None`: a new one.
    pub bucket: Option<String>,
    /// Whether the user's credentials Secret is applied with the app.
    pub secret: bool,
    /// Settings patched into `stowage-settings` (as a user patches them).
    pub settings: Vec<(String, String)>,
    /// Components taken besides [`app_components`] (`custom-ca`, `no-monitoring`).
    /// With `no-monitoring` the cluster gets no PrometheusRule CRD, as a cluster
    /// without the prometheus-operator has none.
    pub components: Vec<String>,
    /// The S3 endpoint and the private CA (PEM file) its certificate is signed by:
    /// the CA goes into the ConfigMap `custom-ca` mounts; `None`: the shared Garage.
    pub tls: Option<(String, PathBuf)>,
    /// The namespace the app is rendered into (Flux's `targetNamespace`).
    pub namespace: String,
}

/// The master password of every install of the test kit.
pub const MASTER_PASSWORD: &str = "kube-test-master-password";

/// prewarm's run shortened for tests (a run polls every second for 20 seconds, a
/// storage class probe waits 10 seconds, a failed restore is retried after 2): the
/// shipped values (50, 2, 60, 30) are for a CronJob every minute.
pub fn prewarm_test_settings() -> Vec<(String, String)> {
    [
        ("STOWAGE_RUN_SECONDS", "20"),
        ("STOWAGE_POLL_SECONDS", "1"),
        ("STOWAGE_PROBE_SECONDS", "10"),
        ("STOWAGE_RESTORE_BACKOFF_SECONDS", "2"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .to_vec()
}

impl Default for Options {
    fn default() -> Options {
        Options {
            bucket: None,
            secret: true,
            settings: prewarm_test_settings(),
            components: Vec::new(),
            tls: None,
            namespace: "stowage".to_string(),
        }
    }
}

/// A kustomization patch that adds `settings` to `stowage-settings`.
pub fn settings_patch(settings: &[(String, String)]) -> String {
    let ops: String = settings
        .iter()
        .map(|(k, v)| format!("    - op: add\n      path: /data/{k}\n      value: \"{v}\"\n"))
        .collect();
    if ops.is_empty() {
        return String::new();
    }
    format!("- target: {{kind: ConfigMap, name: stowage-settings}}\n  patch: |\n{ops}")
}

/// The user's credentials Secret of `installed`, applied.
pub fn credentials_secret(cp: &ControlPlane, installed: &Stowage) {
    let g = crate::garage::shared();
    let secret = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "stowage-credentials", "namespace": installed.namespace},
        "stringData": {
            "master-password": installed.master,
            "mover-access-key-id": g.access_key,
            "mover-secret-access-key": g.secret_key,
            "gc-access-key-id": g.access_key,
            "gc-secret-access-key": g.secret_key,
        },
    });
    apply(cp, &[secret]).unwrap_or_else(|e| panic!("{e}"));
}

/// [`stowage_with`] the default [`Options`], into `cp` (a test's own control plane).
pub fn install_stowage(cp: &ControlPlane) -> Stowage {
    stowage_with(cp, &Options::default())
}

/// Installs [`Stowage`] into `cp` as `options` say (the third-party CRDs too): what
/// [`stowage`] does once per process, for a test's own control plane.
pub fn stowage_with(cp: &ControlPlane, options: &Options) -> Stowage {
    {
        let monitoring = !options.components.iter().any(|c| c == "no-monitoring");
        let crds: Vec<Value> = third_party_crds()
            .into_iter()
            .filter(|c| monitoring || c["spec"]["group"] != "monitoring.coreos.com")
            .collect();
        apply(cp, &crds).unwrap_or_else(|e| panic!("{e}"));
        let g = crate::garage::shared();
        let bucket = options.bucket.clone().unwrap_or_else(|| g.bucket("kube"));
        let mut vars = example_substitute();
        let endpoint = options
            .tls
            .as_ref()
            .map_or(g.endpoint.clone(), |(e, _)| e.clone());
        let port = endpoint.rsplit(':').next().unwrap_or_default().to_string();
        for (k, v) in [
            ("STOWAGE_S3_ENDPOINT", endpoint),
            ("STOWAGE_S3_BUCKET", bucket.clone()),
            ("STOWAGE_S3_REGION", crate::garage::REGION.to_string()),
            ("STOWAGE_S3_PORT", port),
            ("STOWAGE_S3_CIDR", "127.0.0.1/32".to_string()),
        ] {
            vars.insert(k.to_string(), v);
        }
        // A pass whose metrics push fails exits non-zero (by design): the programs
        // push to a sink on loopback instead of the example's cluster Service.
        vars.insert(
            "STOWAGE_PUSHGATEWAY_URL".to_string(),
            format!("http://127.0.0.1:{}", pushgateway_sink()),
        );
        let tree = KustomizeTree::copy();
        let mut components = app_components(&tree);
        components.extend(options.components.iter().cloned());
        let dir = tree.kustomization(
            "stowage",
            &format!(
                "{}{}{}",
                // As Flux's `targetNamespace` renders it; the app's own is `stowage`.
                if options.namespace == "stowage" {
                    String::new()
                } else {
                    format!("namespace: {}\n", options.namespace)
                },
                app_kustomization(&components),
                settings_patch(&options.settings)
            ),
        );
        let objects = tree
            .flux_build(&dir, &vars)
            .unwrap_or_else(|e| panic!("{e}"));
        apply(cp, &objects).unwrap_or_else(|e| panic!("{e}"));
        if let Some((_, ca)) = &options.tls {
            // What the user creates for `custom-ca` (its default name).
            let pem = std::fs::read_to_string(ca).unwrap();
            let cm = serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "stowage-ca", "namespace": options.namespace},
                "data": {"ca.crt": pem},
            });
            apply(cp, &[cm]).unwrap_or_else(|e| panic!("{e}"));
        }
        let installed = Stowage {
            bucket,
            vars,
            objects,
            master: MASTER_PASSWORD.to_string(),
            ca_bundle: options.tls.as_ref().map(|(_, ca)| ca.clone()),
            namespace: options.namespace.clone(),
        };
        if options.secret {
            credentials_secret(cp, &installed);
        }
        installed
    }
}

/// `kubectl create job --from=cronjob/<cronjob> <job> -n stowage`, as an operator
/// starts a run by hand; returns kubectl's error text if it refused.
pub fn create_job_from(cp: &ControlPlane, cronjob: &str, job: &str) -> Result<(), String> {
    create_job_in(cp, "stowage", cronjob, job)
}

/// [`create_job_from`] for an install in namespace `ns`.
pub fn create_job_in(cp: &ControlPlane, ns: &str, cronjob: &str, job: &str) -> Result<(), String> {
    let out = kubectl(
        cp,
        &[
            "create",
            "job",
            &format!("--from=cronjob/{cronjob}"),
            job,
            "-n",
            ns,
        ],
        None,
    );
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A Pushgateway stand-in that accepts every push (200) for the rest of the process;
/// returns its port. What is pushed is asserted elsewhere (`scheduler/tests/pass.rs`).
fn pushgateway_sink() -> u16 {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the sink");
    let port = listener.local_addr().expect("sink address").port();
    std::thread::spawn(move || {
        for sock in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let Ok(mut writer) = sock.try_clone() else {
                    return;
                };
                let mut reader = BufReader::new(sock);
                loop {
                    let mut len = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0; len];
                    if reader.read_exact(&mut body).is_err()
                        || writer
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                            .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn splits_documents_and_skips_empty_ones() {
        let docs = split_documents("---\na: 1\n---\n# only a comment\n---\nb: 2\n");
        assert_eq!(docs, vec!["a: 1\n", "b: 2\n"]);
    }

    #[test]
    fn finds_binding_subjects_left_in_another_namespace() {
        let sa = |ns: &str| json!({"kind": "ServiceAccount", "metadata": {"name": "s", "namespace": ns}});
        let binding = |ns: &str| {
            json!({"kind": "ClusterRoleBinding", "metadata": {"name": "b"},
                   "subjects": [{"kind": "ServiceAccount", "name": "s", "namespace": ns},
                                {"kind": "ServiceAccount", "name": "foreign", "namespace": "x"}]})
        };
        assert!(dangling_subjects(&[sa("other"), binding("other")]).is_empty());
        assert_eq!(
            dangling_subjects(&[sa("other"), binding("stowage")]),
            vec!["ClusterRoleBinding/b: subject ServiceAccount stowage/s".to_string()]
        );
    }
}
