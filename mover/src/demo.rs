//! `stowage-mover demo`: the first command of the README. Backs up a directory to a
//! local repository, restores it elsewhere and compares, using the same code paths as
//! a mover Job.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use stowage_common::backend::Storage;
use stowage_common::location::Location;
use stowage_common::repo::RepoAccess;

use crate::backup::{self, BackupPlan};
use crate::cli::DemoArgs;
use crate::restore::{self, RestorePlan};
use crate::select::Selector;
use crate::treecmp;

const PASSWORD: &str = "stowage-demo";

pub fn run(args: &DemoArgs, interval: Duration) -> Result<()> {
    let work = &args.workdir;
    std::fs::create_dir_all(work).with_context(|| format!("cannot create {}", work.display()))?;
    let work = work.canonicalize()?;
    let source = match &args.path {
        Some(p) => p.clone(),
        None => {
            let s = work.join("sample");
            if !s.exists() {
                make_sample(&s)?;
            }
            s
        }
    };
    let repo_dir = work.join("repo");
    let pw_file = work.join("password");
    std::fs::write(&pw_file, format!("{PASSWORD}\n"))?;
    let access = RepoAccess::new(
        Location::Local(repo_dir.clone()),
        Storage::Local(repo_dir.clone()),
        PASSWORD.into(),
        None,
    );
    let plan = BackupPlan {
        source: source.clone(),
        host: stowage_common::env::DEFAULT_SNAPSHOT_HOST.into(),
        snapshot_path: stowage_common::env::DEFAULT_SOURCE.into(),
        tags: stowage_common::tags::volume_tags(Some("demo"), Some("sample"), None),
        excludes: Vec::new(),
        allow_empty: false,
        pvc_uid: None,
        adopt_history: false,
        progress_interval: interval,
    };
    let b = backup::run(&access, &plan)?;
    let target = work.join("restored");
    if target.exists() {
        std::fs::remove_dir_all(&target)?;
    }
    let r = restore::run(
        &access,
        &RestorePlan {
            target: target.clone(),
            selector: Selector::Latest,
            host: plan.host.clone(),
            replace: false,
            progress_interval: interval,
        },
    )?;
    let diff = treecmp::differences(&treecmp::describe(&source)?, &treecmp::describe(&target)?);
    println!(
        "backed up  {} -> {} (snapshot {})",
        source.display(),
        repo_dir.display(),
        b.snapshot.as_deref().unwrap_or("-")
    );
    println!("restored   {} files into {}", r.files, target.display());
    if !diff.is_empty() {
        bail!(
            "restored tree differs from the source:\n{}",
            diff.join("\n")
        );
    }
    println!("compared   restored tree equals the source (content, modes, times, links, xattrs)");
    println!(
        "inspect    restic -r {} --password-file {} snapshots",
        repo_dir.display(),
        pw_file.display()
    );
    Ok(())
}

fn make_sample(dir: &Path) -> Result<()> {
    let d = |p: &str| -> PathBuf { dir.join(p) };
    std::fs::create_dir_all(d("config"))?;
    std::fs::create_dir_all(d("data/db"))?;
    std::fs::write(d("config/app.yaml"), "listen: 0.0.0.0:8080\nlog: info\n")?;
    std::fs::write(d("README.txt"), "sample volume for the stowage demo\n")?;
    let big: Vec<u8> = (0..4 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(d("data/db/table.bin"), big)?;
    std::fs::write(d("data/empty"), "")?;
    std::os::unix::fs::symlink("../config/app.yaml", d("data/app.yaml"))?;
    std::fs::hard_link(d("README.txt"), d("data/README.link"))?;
    Ok(())
}
