//! Repository locations in the forms restic accepts, so existing Secrets keep working.

use std::fmt;
use std::path::PathBuf;

use crate::Error;

/// Where a repository lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    S3(S3Location),
}

/// An S3 repository: `endpoint` is `scheme://host[:port]` (None: AWS's regional
/// endpoint), `prefix` has no leading or trailing slash (may be empty).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct S3Location {
    pub endpoint: Option<String>,
    pub bucket: String,
    pub prefix: String,
}

impl S3Location {
    /// True for plain-http endpoints.
    pub fn is_plain_http(&self) -> bool {
        self.endpoint
            .as_deref()
            .is_some_and(|e| e.to_ascii_lowercase().starts_with("http://"))
    }

    /// AWS itself prefers virtual-hosted addressing; everything else (MinIO, Garage,
    /// Ceph RGW, ...) is safest with path style.
    pub fn default_path_style(&self) -> bool {
        self.endpoint
            .as_deref()
            .is_some_and(|e| !e.contains("amazonaws.com"))
    }

    /// Object key of `name` (e.g. `config`, `data/ab/ab...`) in this repository.
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.prefix)
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(p) => write!(f, "local:{}", p.display()),
            Location::S3(s) => {
                let ep = s.endpoint.as_deref().unwrap_or("https://s3.amazonaws.com");
                if s.prefix.is_empty() {
                    write!(f, "s3:{ep}/{}", s.bucket)
                } else {
                    write!(f, "s3:{ep}/{}/{}", s.bucket, s.prefix)
                }
            }
        }
    }
}

const UNSUPPORTED: &[&str] = &[
    "rest:", "sftp:", "b2:", "azure:", "gs:", "swift:", "rclone:", "opendal:",
];

impl Location {
    /// Parses `s3:https://host/bucket/path`, `s3:host/bucket/path` (https),
    /// `s3://bucket/path` (endpoint from `default_endpoint`), `local:/path` and plain
    /// paths.
    pub fn parse(input: &str, default_endpoint: Option<&str>) -> Result<Self, Error> {
        let input = input.trim();
        if let Some(redacted) = with_userinfo_redacted(input) {
            // The input itself is never echoed: it holds a secret.
            return Err(Error::Config(format!(
                "repository {redacted}: credentials in the repository URL are not accepted \
                 (they would show in logs, Events and results). Remove `user:password@` and give \
                 the S3 keys as AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
            )));
        }
        if input.is_empty() {
            return Err(Error::Config(
                "no repository given: set RESTIC_REPOSITORY (or STOWAGE_REPOSITORY, or --repo)"
                    .into(),
            ));
        }
        if let Some(rest) = input.strip_prefix("s3://") {
            let (bucket, prefix) = split_bucket(rest, input)?;
            let endpoint = default_endpoint
                .map(|e| normalize_endpoint(e, input))
                .transpose()?;
            return Ok(Location::S3(S3Location {
                endpoint,
                bucket,
                prefix,
            }));
        }
        if let Some(rest) = input.strip_prefix("s3:") {
            let (endpoint, path) = if let Some((scheme, after)) = rest.split_once("://") {
                let (host, path) = after.split_once('/').unwrap_or((after, ""));
                (format!("{}://{host}", scheme.to_ascii_lowercase()), path)
            } else {
                let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
                (format!("https://{host}"), path)
            };
            let endpoint = normalize_endpoint(&endpoint, input)?;
            let (bucket, prefix) = split_bucket(path, input)?;
            return Ok(Location::S3(S3Location {
                endpoint: Some(endpoint),
                bucket,
                prefix,
            }));
        }
        if let Some(rest) = input.strip_prefix("local:") {
            return Ok(Location::Local(PathBuf::from(rest)));
        }
        if let Some(kind) = UNSUPPORTED.iter().find(|k| input.starts_with(**k)) {
            return Err(Error::Config(format!(
                "repository {input}: the {} backend is not supported; stowage speaks S3 \
                 (s3:https://host/bucket/path) and local paths",
                kind.trim_end_matches(':')
            )));
        }
        if input.contains("://") {
            return Err(Error::Config(format!(
                "repository {input}: unknown form; use s3:https://host/bucket/path, \
                 s3://bucket/path, local:/path or a plain path"
            )));
        }
        Ok(Location::Local(PathBuf::from(input)))
    }
}

/// For a URL-like repository with `user[:password]@` before its host, the input with
/// that part replaced by `***@`; `None` otherwise (local paths may contain `@`).
fn with_userinfo_redacted(input: &str) -> Option<String> {
    let (head, rest) = if let Some(i) = input.find("://") {
        input.split_at(i + 3)
    } else if let Some(rest) = input.strip_prefix("s3:") {
        input.split_at(input.len() - rest.len())
    } else {
        return None;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let at = authority.rfind('@')?;
    Some(format!("{head}***@{}", &rest[at + 1..]))
}

fn normalize_endpoint(endpoint: &str, input: &str) -> Result<String, Error> {
    let e = endpoint.trim().trim_end_matches('/');
    let lower = e.to_ascii_lowercase();
    if !(lower.starts_with("https://") || lower.starts_with("http://")) {
        return Err(Error::Config(format!(
            "repository {input}: endpoint {e} must start with https:// or http://"
        )));
    }
    let host = &e[e.find("://").map_or(0, |i| i + 3)..];
    if host.is_empty() || host.contains('/') {
        return Err(Error::Config(format!(
            "repository {input}: endpoint {e} has no host"
        )));
    }
    Ok(e.to_string())
}

fn split_bucket(path: &str, input: &str) -> Result<(String, String), Error> {
    let path = path.trim_matches('/');
    let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
    if bucket.is_empty() {
        return Err(Error::Config(format!(
            "repository {input}: no bucket name (expected s3:https://host/bucket/path)"
        )));
    }
    let prefix = prefix
        .split('/')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("/");
    Ok((bucket.to_string(), prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(endpoint: Option<&str>, bucket: &str, prefix: &str) -> Location {
        Location::S3(S3Location {
            endpoint: endpoint.map(str::to_string),
            bucket: bucket.into(),
            prefix: prefix.into(),
        })
    }

    #[test]
    fn restic_s3_forms() {
        assert_eq!(
            Location::parse("s3:https://minio.lan:9000/backups/ns/app", None).unwrap(),
            s3(Some("https://minio.lan:9000"), "backups", "ns/app")
        );
        assert_eq!(
            Location::parse("s3:minio.lan/backups/ns/app/", None).unwrap(),
            s3(Some("https://minio.lan"), "backups", "ns/app")
        );
        assert_eq!(
            Location::parse("s3:http://127.0.0.1:3900/b", None).unwrap(),
            s3(Some("http://127.0.0.1:3900"), "b", "")
        );
        assert_eq!(
            Location::parse("s3:s3.amazonaws.com/volsync-backups/db/pg", None).unwrap(),
            s3(Some("https://s3.amazonaws.com"), "volsync-backups", "db/pg")
        );
    }

    #[test]
    fn s3_url_form_takes_endpoint_from_environment() {
        assert_eq!(
            Location::parse("s3://bucket/a//b", Some("https://garage.lan/")).unwrap(),
            s3(Some("https://garage.lan"), "bucket", "a/b")
        );
        assert_eq!(
            Location::parse("s3://bucket", None).unwrap(),
            s3(None, "bucket", "")
        );
    }

    #[test]
    fn local_forms() {
        assert_eq!(
            Location::parse("local:/srv/repo", None).unwrap(),
            Location::Local("/srv/repo".into())
        );
        assert_eq!(
            Location::parse("/srv/repo", None).unwrap(),
            Location::Local("/srv/repo".into())
        );
        assert_eq!(
            Location::parse("./repo", None).unwrap(),
            Location::Local("./repo".into())
        );
    }

    #[test]
    fn bad_forms_are_explained() {
        for (input, needle) in [
            ("", "RESTIC_REPOSITORY"),
            ("sftp:host:/repo", "sftp backend is not supported"),
            ("s3:https://host", "no bucket"),
            ("s3:ftp://host/b", "https://"),
            ("gcs://x/y", "unknown form"),
        ] {
            let err = Location::parse(input, None).unwrap_err().to_string();
            assert!(err.contains(needle), "{input}: {err}");
        }
    }

    #[test]
    fn plain_http_and_path_style() {
        let Location::S3(l) = Location::parse("s3:http://h:1/b/p", None).unwrap() else {
            panic!()
        };
        assert!(l.is_plain_http());
        assert!(l.default_path_style());
        assert_eq!(l.key("config"), "p/config");
        let Location::S3(aws) = Location::parse("s3:s3.amazonaws.com/b", None).unwrap() else {
            panic!()
        };
        assert!(!aws.is_plain_http());
        assert!(!aws.default_path_style());
        assert_eq!(aws.key("config"), "config");
    }

    #[test]
    fn credentials_in_the_url_are_refused_and_never_echoed() {
        for input in [
            "s3:https://admin:hunter2@minio.lan:9000/b/p",
            "s3:admin:hunter2@minio.lan/b",
            "s3://admin:hunter2@bucket/p",
            "rest:https://admin:hunter2@host/",
        ] {
            let err = Location::parse(input, None).unwrap_err().to_string();
            assert!(!err.contains("hunter2") && !err.contains("admin"), "{err}");
            assert!(err.contains("***@"), "{err}");
            assert!(err.contains("AWS_ACCESS_KEY_ID"), "{err}");
        }
        // A local path may hold an `@`.
        assert_eq!(
            Location::parse("/srv/backup@2/repo", None).unwrap(),
            Location::Local("/srv/backup@2/repo".into())
        );
        // An `@` in the object prefix is no credential.
        assert!(Location::parse("s3:https://h/b/x@y", None).is_ok());
    }

    #[test]
    fn display_round_trips() {
        let l = Location::parse("s3:https://h:9000/b/x/y", None).unwrap();
        assert_eq!(Location::parse(&l.to_string(), None).unwrap(), l);
    }
}
