//! Opening and creating repositories, with errors that say what to do.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rustic_core::repofile::{SnapshotFile, SnapshotId};
use rustic_core::{
    ConfigOptions, Credentials, FileType, KeyOptions, Open, OpenStatus, ProgressBars, Repository,
    RepositoryOptions,
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

/// The repository location from the flag (`repo`), `STOWAGE_REPOSITORY` or
/// `RESTIC_REPOSITORY`, with the S3 endpoint from the environment.
pub fn resolve_location(
    restic: &ResticEnv,
    common: &CommonEnv,
    repo: Option<&str>,
) -> Result<Location, Error> {
    let input = repo
        .map(str::to_string)
        .or_else(|| common.repository.clone())
        .or_else(|| restic.restic_repository.clone())
        .unwrap_or_default();
    let endpoint = restic
        .aws_endpoint_url_s3
        .as_deref()
        .or(restic.aws_endpoint_url.as_deref());
    Location::parse(&input, endpoint)
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
        let location = resolve_location(restic, common, repo)?;
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

    /// What the location holds: a repository, nothing, or repository objects without
    /// a whole repository. A clear "nothing" only when the storage answered; any
    /// storage error is an error, never "no repository".
    pub fn state(&self) -> Result<RepoState, Error> {
        self.storage.check_access()?;
        let be = self.storage.backends(&self.backend_options)?.repository();
        let count = |tpe: FileType| -> Result<usize, Error> {
            // The local backend logs an error for a directory that is not there (every
            // fresh install): look first.
            if let Storage::Local(root) = &self.storage
                && !root.join(tpe.dirname()).exists()
            {
                return Ok(0);
            }
            be.list(tpe).map(|l| l.len()).map_err(Error::from_rustic)
        };
        let config = count(FileType::Config)?;
        if config > 1 {
            return Err(Error::Damaged(format!(
                "repository {}: more than one config object; repair it with restic \
                 (`restic check`) before stowage uses it",
                self.location
            )));
        }
        let keys = count(FileType::Key)?;
        let mut inv = Inventory {
            config: config == 1,
            keys,
            ..Default::default()
        };
        // Only a missing config needs the rest: that is rare, and listing every pack
        // of a healthy repository would cost a request per 1,000 packs on each run.
        if !inv.config {
            inv.snapshots = count(FileType::Snapshot)?;
            inv.index = count(FileType::Index)?;
            inv.data = count(FileType::Pack)?;
            // rustic_core does not know restic's lock files.
            inv.locks = self.storage.list(crate::locks::LOCKS_DIR)?.len();
        }
        Ok(judge(&inv, &self.location.to_string()))
    }

    /// Whether a repository exists here; a damaged one is an error
    /// ([`Error::Damaged`]).
    pub fn exists(&self) -> Result<bool, Error> {
        match self.state()? {
            RepoState::Absent => Ok(false),
            RepoState::Present => Ok(true),
            RepoState::Damaged(m) => Err(Error::Damaged(m)),
        }
    }

    /// Opens an existing repository; `Ok(None)` if there is none, an error if the
    /// location holds a damaged one.
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
        // `open` returned None: the location holds no repository object at all (a
        // damaged repository is an error there), so nothing is written over.
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

/// What a location holds, by kind of repository object (counts of files).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    pub config: bool,
    pub keys: usize,
    pub snapshots: usize,
    pub index: usize,
    pub data: usize,
    pub locks: usize,
}

/// A location's state: what `open` and `open_or_init` act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoState {
    /// No repository object at all: a first backup may create one here.
    Absent,
    Present,
    /// Repository objects without a whole repository: never created over, never read
    /// as "no backup". The message names what exists, what is missing and what to do.
    Damaged(String),
}

/// Judges an inventory. Only a location without any repository object is absent:
/// a backup that initialised over `keys/`, `snapshots/` and `data/` without `config`
/// would add a second key and config, and neither stowage nor restic could open the
/// old snapshots afterwards.
pub fn judge(inv: &Inventory, location: &str) -> RepoState {
    if inv.config {
        if inv.keys == 0 {
            return RepoState::Damaged(format!(
                "repository {location} is damaged: it has a config object but no key \
                 (keys/ is empty), so no password can open it. Put the keys/ files back from a \
                 copy of the bucket or directory; stowage does not write here until then"
            ));
        }
        return RepoState::Present;
    }
    let found: Vec<String> = [
        ("keys", inv.keys),
        ("snapshots", inv.snapshots),
        ("index", inv.index),
        ("data", inv.data),
        ("locks", inv.locks),
    ]
    .iter()
    .filter(|(_, n)| *n > 0)
    .map(|(dir, n)| format!("{dir}/ ({n} file{})", if *n == 1 { "" } else { "s" }))
    .collect();
    if found.is_empty() {
        return RepoState::Absent;
    }
    RepoState::Damaged(format!(
        "repository {location} is damaged: it holds {} but no config object. stowage neither \
         restores from it nor creates a new repository over it. Put the config object back \
         from a copy of the bucket or directory (it cannot be recreated: it holds the \
         repository's id and chunker settings); if the data is not needed, delete everything \
         under the location to start a new repository",
        found.join(", ")
    ))
}

/// A snapshot file that cannot be read (garbage, truncated, another repository's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedSnapshot {
    /// The file's name (its id) under `snapshots/`.
    pub id: String,
    pub error: String,
}

/// The readable snapshots and the damaged snapshot files of a repository.
#[derive(Debug, Clone, Default)]
pub struct SnapshotListing {
    /// In no particular order; each with its id set.
    pub snapshots: Vec<SnapshotFile>,
    pub damaged: Vec<DamagedSnapshot>,
}

impl SnapshotListing {
    /// One line for logs and errors: how many were skipped and which.
    pub fn damaged_summary(&self) -> Option<String> {
        damaged_summary(&self.damaged)
    }

    /// Logs a warning naming each damaged file, once per listing.
    pub fn warn(&self, location: &Location) {
        for d in &self.damaged {
            tracing::warn!(
                repository = %location,
                file = %format!("snapshots/{}", d.id),
                "skipping damaged snapshot file snapshots/{} ({}); the other snapshots are \
                 used. Put it back from a copy of the bucket, or delete that object (it \
                 cannot be read by restic either)",
                d.id,
                d.error
            );
        }
    }

    /// The damaged file whose id starts with `prefix`, if any.
    pub fn damaged_matching(&self, prefix: &str) -> Option<&DamagedSnapshot> {
        let p = prefix.to_ascii_lowercase();
        self.damaged.iter().find(|d| d.id.starts_with(&p))
    }
}

/// "2 damaged snapshot files skipped: snapshots/ab12cd34, snapshots/ef56..."; `None`
/// when nothing was skipped.
pub fn damaged_summary(damaged: &[DamagedSnapshot]) -> Option<String> {
    if damaged.is_empty() {
        return None;
    }
    let names: Vec<String> = damaged
        .iter()
        .map(|d| format!("snapshots/{}", &d.id[..d.id.len().min(8)]))
        .collect();
    Some(format!(
        "{} damaged snapshot file{} skipped: {}",
        damaged.len(),
        if damaged.len() == 1 { "" } else { "s" },
        names.join(", ")
    ))
}

/// All snapshots, skipping (and reporting) damaged snapshot files: one garbled file
/// must not block every backup, restore and listing (restic skips them too). A
/// storage failure is an error, never a skipped file: a snapshot missing from the
/// list would mislead the backup guards.
pub fn list_snapshots<S: Open>(repo: &Repository<S>) -> Result<SnapshotListing, Error> {
    let ids: Vec<SnapshotId> = repo
        .list::<SnapshotId>()
        .map_err(Error::from_rustic)?
        .collect();
    let mut good: BTreeMap<SnapshotId, SnapshotFile> = BTreeMap::new();
    for item in repo
        .stream_files_list::<SnapshotFile>(ids.clone())
        .map_err(Error::from_rustic)?
    {
        match item {
            Ok((id, mut snap)) => {
                snap.id = id;
                good.insert(id, snap);
            }
            Err(e) => {
                if let Some(line) = Error::storage_failure(&e) {
                    return Err(Error::Storage(line));
                }
            }
        }
    }
    // The stream's errors do not say which file failed: read those again one by one.
    let mut damaged = Vec::new();
    for id in ids {
        if good.contains_key(&id) {
            continue;
        }
        match repo.get_file::<SnapshotFile>(&id) {
            Ok(mut snap) => {
                snap.id = id;
                good.insert(id, snap);
            }
            Err(e) => {
                if let Some(line) = Error::storage_failure(&e) {
                    return Err(Error::Storage(line));
                }
                damaged.push(DamagedSnapshot {
                    id: id.to_hex().to_string(),
                    error: Error::from_rustic(e).to_string(),
                });
            }
        }
    }
    Ok(SnapshotListing {
        snapshots: good.into_values().collect(),
        damaged,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_location_without_any_repository_object_is_absent() {
        assert_eq!(judge(&Inventory::default(), "local:/r"), RepoState::Absent);
        let whole = Inventory {
            config: true,
            keys: 1,
            ..Default::default()
        };
        assert_eq!(judge(&whole, "local:/r"), RepoState::Present);
        let no_config = Inventory {
            keys: 1,
            snapshots: 3,
            data: 12,
            ..Default::default()
        };
        let RepoState::Damaged(m) = judge(&no_config, "s3:http://h/b/p") else {
            panic!("a missing config is damage")
        };
        for needle in [
            "s3:http://h/b/p",
            "keys/ (1 file)",
            "snapshots/ (3 files)",
            "data/ (12 files)",
            "no config object",
            "Put the config object back",
        ] {
            assert!(m.contains(needle), "{needle}: {m}");
        }
        assert!(!m.contains("index/"), "only what exists is named: {m}");
        for one in [
            Inventory {
                index: 1,
                ..Default::default()
            },
            Inventory {
                data: 1,
                ..Default::default()
            },
            Inventory {
                locks: 1,
                ..Default::default()
            },
        ] {
            assert!(matches!(judge(&one, "x"), RepoState::Damaged(_)), "{one:?}");
        }
        let RepoState::Damaged(m) = judge(
            &Inventory {
                config: true,
                ..Default::default()
            },
            "x",
        ) else {
            panic!("a config without keys is damage")
        };
        assert!(m.contains("no key"), "{m}");
    }

    #[test]
    fn damaged_snapshot_files_are_counted_and_named() {
        assert_eq!(damaged_summary(&[]), None);
        let d = |id: &str| DamagedSnapshot {
            id: id.into(),
            error: "bad".into(),
        };
        assert_eq!(
            damaged_summary(&[d("ab12cd34ef")]).unwrap(),
            "1 damaged snapshot file skipped: snapshots/ab12cd34"
        );
        assert_eq!(
            damaged_summary(&[d("ab12cd34ef"), d("0011")]).unwrap(),
            "2 damaged snapshot files skipped: snapshots/ab12cd34, snapshots/0011"
        );
        let l = SnapshotListing {
            snapshots: vec![],
            damaged: vec![d("ab12cd34ef")],
        };
        assert!(l.damaged_matching("AB12").is_some());
        assert!(l.damaged_matching("ff").is_none());
    }
}
