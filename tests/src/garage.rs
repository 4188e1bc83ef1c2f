//! Garage, a production S3 server, started once per test process on loopback.
//! `scripts/install-test-tools.sh` installs it (`cargo install garage`).
//!
//! The server runs under a small shell that kills it when its stdin closes, which
//! happens when the test process exits however it exits: no server outlives its tests.

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::free_port;

pub const REGION: &str = "garage";
const ACCESS_KEY: &str = "GK0123456789abcdef01234567";
const SECRET_KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

pub struct Garage {
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    /// The admin API (`host:port`), which also serves Prometheus metrics.
    pub admin: String,
    config: PathBuf,
    _dir: tempfile::TempDir,
    _keepalive: Mutex<(Child, ChildStdin)>,
    counter: AtomicU32,
}

/// The path of the `garage` binary: `GARAGE_BIN`, or `garage` on PATH / in ~/.cargo/bin.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("GARAGE_BIN") {
        return p.into();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        if dir.join("garage").is_file() {
            return dir.join("garage");
        }
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let cargo = home.join(".cargo/bin/garage");
    if cargo.is_file() {
        return cargo;
    }
    panic!(
        "the garage S3 server is not installed: run scripts/install-test-tools.sh (cargo install garage --locked)"
    )
}

static SHARED: OnceLock<Garage> = OnceLock::new();

/// The process-wide server, started on first use.
pub fn shared() -> &'static Garage {
    SHARED.get_or_init(Garage::start)
}

impl Garage {
    fn start() -> Garage {
        let dir = tempfile::tempdir().unwrap();
        let (rpc, s3, admin) = (free_port(), free_port(), free_port());
        let config = dir.path().join("garage.toml");
        std::fs::write(
            &config,
            format!(
                r#"metadata_dir = "{d}/meta"
data_dir = "{d}/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
admin_token = "test-admin-token"
"#,
                d = dir.path().display(),
                secret = "ab".repeat(32),
            ),
        )
        .unwrap();
        let log = dir.path().join("garage.log");
        // The server lives in a static, whose TempDir is never dropped: the shell also
        // removes the data directory once the server has stopped (a test binary or a
        // benchmark leaves nothing behind on disk).
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#""$0" server >"$1" 2>&1 & p=$!; read _; kill $p; wait $p; rm -rf "$2""#)
            .arg(binary())
            .arg(&log)
            .arg(dir.path())
            .env("GARAGE_CONFIG_FILE", &config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .spawn()
            .expect("start garage");
        let stdin = child.stdin.take().unwrap();
        let g = Garage {
            endpoint: format!("http://127.0.0.1:{s3}"),
            access_key: ACCESS_KEY.into(),
            secret_key: SECRET_KEY.into(),
            admin: format!("127.0.0.1:{admin}"),
            config,
            _keepalive: Mutex::new((child, stdin)),
            counter: AtomicU32::new(0),
            _dir: dir,
        };
        // Wait until the daemon answers over RPC (`node id` alone reads a local file),
        // then give the node a role.
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Err(e) = g.cli_try(&["status"]) {
            if Instant::now() > deadline {
                panic!(
                    "garage did not start: {e}\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let node = g
            .cli(&["node", "id", "-q"])
            .trim()
            .split('@')
            .next()
            .unwrap()
            .to_string();
        g.cli(&["layout", "assign", "-z", "dc1", "-c", "10G", &node]);
        g.cli(&["layout", "apply", "--version", "1"]);
        g.cli(&[
            "key", "import", "--yes", "-n", "tests", ACCESS_KEY, SECRET_KEY,
        ]);
        g.wait_for_s3();
        g
    }

    fn wait_for_s3(&self) {
        let addr = self.endpoint.trim_start_matches("http://").to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "garage S3 API did not open {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn cli_try(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(binary())
            .args(args)
            .env("GARAGE_CONFIG_FILE", &self.config)
            .env("RUST_LOG", "warn")
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "garage {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    pub fn cli(&self, args: &[&str]) -> String {
        self.cli_try(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A new, empty bucket the test keys may use.
    pub fn bucket(&self, hint: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let clean: String = hint
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .take(40)
            .collect();
        let name = format!("t{n}-{}-{clean}", std::process::id());
        self.cli(&["bucket", "create", &name]);
        self.cli(&[
            "bucket", "allow", "--read", "--write", "--owner", &name, "--key", ACCESS_KEY,
        ]);
        name
    }

    /// Environment of a program using `repo` (`bucket/prefix`) on this server.
    pub fn env(&self, repo: &str) -> Vec<(String, String)> {
        self.env_via(&self.endpoint, repo)
    }

    /// Same, but through another endpoint (a fault proxy in front of this server).
    pub fn env_via(&self, endpoint: &str, repo: &str) -> Vec<(String, String)> {
        vec![
            ("RESTIC_REPOSITORY".into(), format!("s3:{endpoint}/{repo}")),
            ("AWS_ACCESS_KEY_ID".into(), self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret_key.clone()),
            ("AWS_DEFAULT_REGION".into(), REGION.into()),
            ("STOWAGE_ALLOW_HTTP".into(), "true".into()),
        ]
    }

    /// S3 requests the server has answered since it started (its own
    /// `api_s3_request_counter`): counted at the server, independent of the client.
    pub fn s3_requests(&self) -> u64 {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(&self.admin).expect("garage admin API");
        write!(
            c,
            "GET /metrics HTTP/1.0\r\nHost: {}\r\nAuthorization: Bearer test-admin-token\r\n\r\n",
            self.admin
        )
        .unwrap();
        let mut text = String::new();
        c.read_to_string(&mut text).unwrap();
        text.lines()
            .filter(|l| l.starts_with("api_s3_request_counter"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// The S3 API address (host:port).
    pub fn addr(&self) -> &str {
        self.endpoint.trim_start_matches("http://")
    }

    /// The server's configuration file (for `garage` CLI calls of a test).
    pub fn config_path(&self) -> &Path {
        &self.config
    }
}
