//! `stowage-mover snapshots`.

use anyhow::Result;
use rustic_core::NoProgressBars;
use rustic_core::repofile::SnapshotFile;
use stowage_common::Error;
use stowage_common::repo::RepoAccess;

use crate::progress::human_bytes;
use crate::select::SnapInfo;

pub fn snap_info(s: &SnapshotFile) -> SnapInfo {
    SnapInfo {
        id: s.id.to_hex().to_string(),
        time: s.time.timestamp(),
        host: s.hostname.clone(),
        paths: s.paths.iter().cloned().collect(),
        tags: s.tags.iter().cloned().collect(),
        files: s.summary.as_ref().map(|x| x.total_files_processed),
        bytes: s.summary.as_ref().map(|x| x.total_bytes_processed),
    }
}

/// All snapshots, oldest first. An absent repository has none.
pub fn list(access: &RepoAccess) -> Result<Vec<SnapInfo>> {
    let Some(repo) = access.open(NoProgressBars)? else {
        return Ok(Vec::new());
    };
    let mut infos: Vec<_> = repo
        .get_all_snapshots()
        .map_err(Error::from_rustic)?
        .iter()
        .map(snap_info)
        .collect();
    infos.sort_by_key(|s| s.time);
    Ok(infos)
}

pub fn table(snaps: &[SnapInfo]) -> String {
    let mut rows = vec![[
        "ID".to_string(),
        "Time".into(),
        "Host".into(),
        "Paths".into(),
        "Tags".into(),
        "Files".into(),
        "Size".into(),
    ]];
    for s in snaps {
        rows.push([
            s.id.chars().take(8).collect(),
            s.time.strftime("%Y-%m-%d %H:%M:%S").to_string(),
            s.host.clone(),
            s.paths.join(","),
            s.tags.join(","),
            s.files.map_or("-".into(), |f| f.to_string()),
            s.bytes.map_or("-".into(), human_bytes),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        out += line.join("  ").trim_end();
        out.push('\n');
    }
    out += &format!("{} snapshot(s)\n", snaps.len());
    out
}
