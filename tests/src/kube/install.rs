//! Installing what users install, the way Flux installs it: `kustomize build` (the
//! real kubectl's), Flux's `postBuild.substitute` on each object's YAML text, then a
//! server-side apply to the real API server (CustomResourceDefinitions and Namespaces
//! first, once established the rest).

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

/// `kubectl kustomize dir`: the rendered YAML, or kubectl's error.
pub fn kustomize(dir: &Path) -> Result<String, String> {
    let out = Command::new(command("kubectl"))
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("run kubectl kustomize");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).expect("utf-8 YAML"))
    } else {
        Err(format!(
            "kubectl kustomize {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Flux's variable substitution (drone/envsubst as Flux configures it, not strict) on
/// one object's YAML text: `${NAME}`, `${NAME:=default}`, `${NAME:-default}` (default
/// when unset or empty), `${NAME=default}`, `${NAME-default}` (default when unset);
/// an unset variable without default becomes empty; `$${` stays a literal `${`.
pub fn substitute(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(after) = rest.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
            continue;
        }
        let Some(body_end) = rest.strip_prefix("${").and_then(|b| b.find('}')) else {
            out.push('$');
            rest = &rest[1..];
            continue;
        };
        let body = &rest[2..2 + body_end];
        let name_len = body
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(body.len());
        let (name, op) = body.split_at(name_len);
        let value = vars.get(name).map(String::as_str);
        let resolved = if let Some(d) = op.strip_prefix(":=").or(op.strip_prefix(":-")) {
            Some(value.filter(|v| !v.is_empty()).unwrap_or(d))
        } else if let Some(d) = op.strip_prefix('=').or(op.strip_prefix('-')) {
            Some(value.unwrap_or(d))
        } else if op.is_empty() && !name.is_empty() {
            Some(value.unwrap_or(""))
        } else {
            None
        };
        match resolved {
            Some(v) => {
                out.push_str(v);
                rest = &rest[2 + body_end + 1..];
            }
            None => {
                out.push('$');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The objects of a rendering, each substituted as Flux does it (objects annotated
/// `kustomize.toolkit.fluxcd.io/substitute: disabled` are left alone).
pub fn flux_objects(rendered: &str, vars: &BTreeMap<String, String>) -> Vec<Value> {
    split_documents(rendered)
        .into_iter()
        .map(|doc| {
            let obj: Value = serde_saphyr::from_str(doc).expect("kustomize's YAML parses");
            let disabled = obj["metadata"]["annotations"][SUBSTITUTE_ANNOTATION] == "disabled";
            if disabled {
                obj
            } else {
                let text = substitute(doc, vars);
                serde_saphyr::from_str(&text).unwrap_or_else(|e| {
                    panic!(
                        "{} {}: after Flux's substitution the YAML no longer parses: {e}",
                        obj["kind"], obj["metadata"]["name"]
                    )
                })
            }
        })
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
}

/// The components the shared install uses: all but `mover-network-policy` (it goes into
/// an app's namespace), `no-monitoring` (the PrometheusRule CRD is installed) and
/// `custom-ca` (it mounts the user's CA ConfigMap, which an S3 over plain http has
/// none of: the programs' pods would wait for it; its rendering is checked in
/// `tests/tests/manifests.rs`).
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
        "metadata": {"name": "stowage-credentials", "namespace": "stowage"},
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

/// Installs [`Stowage`] into `cp` as `options` say (the third-party CRDs too): what
/// [`stowage`] does once per process, for a test's own control plane.
pub fn stowage_with(cp: &ControlPlane, options: &Options) -> Stowage {
    {
        apply(cp, &third_party_crds()).unwrap_or_else(|e| panic!("{e}"));
        let g = crate::garage::shared();
        let bucket = options.bucket.clone().unwrap_or_else(|| g.bucket("kube"));
        let mut vars = example_substitute();
        let port = g
            .endpoint
            .rsplit(':')
            .next()
            .unwrap_or_default()
            .to_string();
        for (k, v) in [
            ("STOWAGE_S3_ENDPOINT", g.endpoint.clone()),
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
        let dir = tree.kustomization(
            "stowage",
            &format!(
                "{}{}",
                app_kustomization(&app_components(&tree)),
                settings_patch(&options.settings)
            ),
        );
        let objects = flux_objects(&kustomize(&dir).unwrap_or_else(|e| panic!("{e}")), &vars);
        apply(cp, &objects).unwrap_or_else(|e| panic!("{e}"));
        let installed = Stowage {
            bucket,
            vars,
            objects,
            master: MASTER_PASSWORD.to_string(),
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
    let out = kubectl(
        cp,
        &[
            "create",
            "job",
            &format!("--from=cronjob/{cronjob}"),
            job,
            "-n",
            "stowage",
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

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn substitutes_as_flux_does() {
        let v = vars(&[("SET", "x"), ("EMPTY", "")]);
        assert_eq!(substitute("a: ${SET}", &v), "a: x");
        assert_eq!(substitute("a: ${UNSET}", &v), "a: ");
        assert_eq!(substitute("a: ${UNSET:=17 * * * *}", &v), "a: 17 * * * *");
        assert_eq!(substitute("a: ${EMPTY:=d}", &v), "a: d");
        assert_eq!(substitute("a: ${EMPTY:-d}", &v), "a: d");
        assert_eq!(substitute("a: ${EMPTY=d}", &v), "a: ");
        assert_eq!(substitute("a: ${UNSET-d}", &v), "a: d");
        assert_eq!(substitute("a: ${SET:=d}", &v), "a: x");
        assert_eq!(substitute("a: ${UNSET:=}", &v), "a: ");
        assert_eq!(substitute("a: $${SET} $5 $", &v), "a: ${SET} $5 $");
    }

    #[test]
    fn splits_documents_and_skips_empty_ones() {
        let docs = split_documents("---\na: 1\n---\n# only a comment\n---\nb: 2\n");
        assert_eq!(docs, vec!["a: 1\n", "b: 2\n"]);
    }

    #[test]
    fn leaves_objects_with_substitution_disabled_alone() {
        let rendered = format!(
            "kind: ConfigMap\nmetadata:\n  name: a\ndata:\n  x: ${{V:=1}}\n---\n\
             kind: ConfigMap\nmetadata:\n  name: b\n  annotations:\n    {SUBSTITUTE_ANNOTATION}: disabled\ndata:\n  x: ${{V:=1}}\n"
        );
        let objs = flux_objects(&rendered, &BTreeMap::new());
        assert_eq!(objs[0]["data"]["x"], 1);
        assert_eq!(objs[1]["data"]["x"], "${V:=1}");
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
