//! Opening and creating repositories, with errors that say what to do.

use std::path::{Path, PathBuf};

use rustic_core::{
    ConfigOptions, Credentials, KeyOptions, OpenStatus, ProgressBars, Repository, RepositoryOptions,
};

use crate::Error;
use crate::backend::{BackendOptions, Storage};
use crate::env::{CommonEnv, ResticEnv};
use crate::location::Location;

/// An opened repository.
pub type OpenRepo = Repository<OpenStatus>;

/// Where the repository is and how to open it.
pub struct RepoAccess {
    pub location: Location,
    pub storage: Storage,
    password: String,
    cache_dir: Option<PathBuf>,
    /// Read budget and rate limits.
    pub backend_options: BackendOptions,
}

impl std::fmt::Debug for RepoAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoAccess")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// Reads the password: an explicit file wins, then `RESTIC_PASSWORD`, then
/// `RESTIC_PASSWORD_FILE`.
pub fn read_password(file: Option<&Path>, restic: &ResticEnv) -> Result<String, Error> {
    let from_file = |p: &Path, var: &str| -> Result<String, Error> {
        let text = std::fs::read_to_string(p).map_err(|e| {
            Error::Config(format!(
                "cannot read the password file {} ({var}): {e}",
                p.display()
            ))
        })?;
        let pw = text.lines().next().unwrap_or_default().to_string();
        if pw.is_empty() {
            return Err(Error::Config(format!(
                "the password file {} ({var}) is empty",
                p.display()
            )));
        }
        Ok(pw)
    };
    if let Some(p) = file {
        return from_file(p, "--password-file / STOWAGE_PASSWORD_FILE");
    }
    if let Some(pw) = &restic.restic_password {
        return Ok(pw.clone());
    }
    if let Some(p) = &restic.restic_password_file {
        return from_file(p, "RESTIC_PASSWORD_FILE");
    }
    Err(Error::Config(
        "no repository password: set RESTIC_PASSWORD or RESTIC_PASSWORD_FILE (or --password-file)"
            .into(),
    ))
}

impl RepoAccess {
    /// Resolves location, storage and password from the environment and flags
    /// (`repo` / `password_file` are the command-line overrides).
    pub fn from_env(
        restic: &ResticEnv,
        common: &CommonEnv,
        repo: Option<&str>,
        password_file: Option<&Path>,
    ) -> Result<Self, Error> {
        let input = repo
            .map(str::to_string)
            .or_else(|| common.repository.clone())
            .or_else(|| restic.restic_repository.clone())
            .unwrap_or_default();
        let endpoint = restic
            .aws_endpoint_url_s3
            .as_deref()
            .or(restic.aws_endpoint_url.as_deref());
        let location = Location::parse(&input, endpoint)?;
        let password = read_password(password_file.or(common.password_file.as_deref()), restic)?;
        let storage = Storage::open(&location, restic, common)?;
        Ok(Self {
            location,
            storage,
            password,
            cache_dir: common
                .cache_dir
                .clone()
                .or_else(|| restic.restic_cache_dir.clone()),
            backend_options: BackendOptions::from_env(common),
        })
    }

    /// For tests and embedded use: explicit parts.
    pub fn new(
        location: Location,
        storage: Storage,
        password: String,
        cache_dir: Option<PathBuf>,
    ) -> Self {
        Self {
            location,
            storage,
            password,
            cache_dir,
            backend_options: BackendOptions::default(),
        }
    }

    fn options(&self) -> RepositoryOptions {
        match &self.cache_dir {
            Some(dir) => RepositoryOptions::default().cache_dir(dir.clone()),
            None => RepositoryOptions::default().no_cache(true),
        }
    }

    fn unopened<P: ProgressBars>(&self, progress: P) -> Result<Repository<()>, Error> {
        Repository::new_with_progress(
            &self.options(),
            &self.storage.backends(&self.backend_options)?,
            progress,
        )
        .map_err(Error::from_rustic)
    }

    /// Whether a repository exists here. A clear "no" only when the storage answered;
    /// any storage error is an error, never "no repository".
    pub fn exists(&self) -> Result<bool, Error> {
        self.storage.check_access()?;
        let repo = self.unopened(rustic_core::NoProgressBars)?;
        Ok(repo.config_id().map_err(Error::from_rustic)?.is_some())
    }

    /// Opens an existing repository; `Ok(None)` if there is none.
    pub fn open<P: ProgressBars>(&self, progress: P) -> Result<Option<OpenRepo>, Error> {
        if !self.exists()? {
            return Ok(None);
        }
        let repo = self.unopened(progress)?;
        repo.open(&Credentials::password(&self.password))
            .map(Some)
            .map_err(|e| self.contextualize(Error::from_rustic(e)))
    }

    /// Opens the repository, creating it (restic format v2, zstd) if there is none.
    pub fn open_or_init<P: ProgressBars + Clone>(
        &self,
        progress: P,
    ) -> Result<(OpenRepo, bool), Error> {
        if let Some(repo) = self.open(progress.clone())? {
            return Ok((repo, false));
        }
        tracing::info!(repository = %self.location, "no repository here yet: creating it");
        let repo = self
            .unopened(progress)?
            .init(
                &Credentials::password(&self.password),
                &KeyOptions::default(),
                &ConfigOptions::default(),
            )
            .map_err(|e| self.contextualize(Error::from_rustic(e)))?;
        Ok((repo, true))
    }

    fn contextualize(&self, e: Error) -> Error {
        match e {
            Error::WrongPassword(m) => {
                Error::WrongPassword(format!("repository {}: {m}", self.location))
            }
            Error::Storage(m) => Error::Storage(format!("repository {}: {m}", self.location)),
            Error::Repository(m) => Error::Repository(format!("repository {}: {m}", self.location)),
            other => other,
        }
    }
}
