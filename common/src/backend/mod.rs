//! Where repository files are stored: S3 (the project's one S3 stack) or a local
//! directory. Also gives raw access to files rustic_core does not know (restic locks).

pub mod s3;
pub mod shaped;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use rustic_backend::local::LocalBackend;
use rustic_core::{RepositoryBackends, WriteBackend};

use crate::Error;
use crate::env::{CommonEnv, ResticEnv};
use crate::location::Location;
use crate::s3::S3Settings;
pub use s3::{S3Backend, TransferStats};

/// How rustic_core's view of the storage is wrapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendOptions {
    /// Upload / download limits in KiB/s.
    pub limit_upload: Option<u64>,
    pub limit_download: Option<u64>,
    /// Pack data held in memory at once by reads (restores), in MiB.
    pub read_budget_mib: u32,
}

impl BackendOptions {
    /// A limit of 0 is no limit, as in restic (it used to mean 1 byte/s, and a run
    /// hung without a word).
    pub fn from_env(common: &CommonEnv) -> Self {
        Self {
            limit_upload: common.limit_upload.filter(|&k| k > 0),
            limit_download: common.limit_download.filter(|&k| k > 0),
            read_budget_mib: common.read_budget_mib,
        }
    }
}

impl Default for BackendOptions {
    fn default() -> Self {
        Self::from_env(&CommonEnv::default())
    }
}

/// An opened storage location.
#[derive(Clone, Debug)]
pub enum Storage {
    Local(PathBuf),
    S3(S3Backend),
}

impl Storage {
    /// Sets up access to `location`; sends no request yet.
    pub fn open(
        location: &Location,
        restic: &ResticEnv,
        common: &CommonEnv,
    ) -> Result<Self, Error> {
        match location {
            Location::Local(path) => Ok(Storage::Local(path.clone())),
            Location::S3(s3) => {
                let settings = S3Settings::from_env(s3.clone(), restic, common)?;
                Ok(Storage::S3(S3Backend::new(settings)?))
            }
        }
    }

    /// The backend rustic_core drives, with the read budget and rate limits.
    pub fn backends(&self, opts: &BackendOptions) -> Result<RepositoryBackends, Error> {
        let be: Arc<dyn WriteBackend> = match self {
            Storage::Local(path) => {
                let p = path.to_str().ok_or_else(|| {
                    Error::Config(format!("repository path {} is not UTF-8", path.display()))
                })?;
                Arc::new(LocalBackend::new(p, Vec::new()).map_err(Error::from_rustic)?)
            }
            Storage::S3(s3) => Arc::new(s3.clone()),
        };
        let be = shaped::Shaped::new(
            be,
            opts.read_budget_mib,
            opts.limit_upload,
            opts.limit_download,
        );
        Ok(RepositoryBackends::new(Arc::new(be), None))
    }

    /// Waits for queued uploads (S3); the first failure is returned.
    pub fn flush(&self) -> Result<(), Error> {
        match self {
            Storage::Local(_) => Ok(()),
            Storage::S3(s3) => s3.flush().map_err(Error::from_rustic),
        }
    }

    pub fn stats(&self) -> Option<Arc<TransferStats>> {
        match self {
            Storage::Local(_) => None,
            Storage::S3(s3) => Some(s3.stats()),
        }
    }

    /// Names and sizes of the files in `dir` (e.g. `locks`).
    pub fn list(&self, dir: &str) -> Result<Vec<(String, u64)>, Error> {
        match self {
            Storage::Local(root) => {
                let d = root.join(dir);
                let entries = match std::fs::read_dir(&d) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                    Err(e) => return Err(io_err("list", &d, e)),
                };
                let mut out = Vec::new();
                for e in entries {
                    let e = e.map_err(|e| io_err("list", &d, e))?;
                    let meta = e.metadata().map_err(|err| io_err("stat", &e.path(), err))?;
                    if meta.is_file() {
                        out.push((e.file_name().to_string_lossy().into_owned(), meta.len()));
                    }
                }
                Ok(out)
            }
            Storage::S3(s3) => Ok(s3
                .list_keys(dir)
                .map_err(Error::from)?
                .into_iter()
                .filter_map(|(k, size)| Some((k.rsplit('/').next()?.to_string(), size)))
                .collect()),
        }
    }

    /// Reads `dir/name`; `None` if it does not exist.
    pub fn read(&self, dir: &str, name: &str) -> Result<Option<Bytes>, Error> {
        match self {
            Storage::Local(root) => {
                let p = root.join(dir).join(name);
                match std::fs::read(&p) {
                    Ok(b) => Ok(Some(Bytes::from(b))),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(io_err("read", &p, e)),
                }
            }
            Storage::S3(s3) => s3
                .get_key(&s3.settings().location.key(&format!("{dir}/{name}")))
                .map_err(Error::from),
        }
    }

    pub fn write(&self, dir: &str, name: &str, data: Bytes) -> Result<(), Error> {
        match self {
            Storage::Local(root) => {
                let d = root.join(dir);
                std::fs::create_dir_all(&d).map_err(|e| io_err("create", &d, e))?;
                let p = d.join(name);
                std::fs::write(&p, &data).map_err(|e| io_err("write", &p, e))
            }
            Storage::S3(s3) => s3
                .put_key(&s3.settings().location.key(&format!("{dir}/{name}")), data)
                .map_err(Error::from),
        }
    }

    pub fn remove(&self, dir: &str, name: &str) -> Result<(), Error> {
        match self {
            Storage::Local(root) => {
                let p = root.join(dir).join(name);
                match std::fs::remove_file(&p) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        Err(io_err("remove", &p, e))
                    }
                    _ => Ok(()),
                }
            }
            Storage::S3(s3) => s3
                .delete_key(&s3.settings().location.key(&format!("{dir}/{name}")))
                .map_err(Error::from),
        }
    }

    /// Checks that the storage answers: the bucket exists and the keys are accepted.
    /// A local repository needs nothing.
    pub fn check_access(&self) -> Result<(), Error> {
        match self {
            Storage::Local(_) => Ok(()),
            Storage::S3(s3) => s3.check_bucket().map_err(Error::from),
        }
    }
}

fn io_err(op: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Storage(format!("cannot {op} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_of_zero_is_no_limit() {
        let common = CommonEnv {
            limit_upload: Some(0),
            limit_download: Some(0),
            ..Default::default()
        };
        let o = BackendOptions::from_env(&common);
        assert_eq!((o.limit_upload, o.limit_download), (None, None));
        let common = CommonEnv {
            limit_upload: Some(512),
            limit_download: None,
            ..Default::default()
        };
        let o = BackendOptions::from_env(&common);
        assert_eq!((o.limit_upload, o.limit_download), (Some(512), None));
    }
}
