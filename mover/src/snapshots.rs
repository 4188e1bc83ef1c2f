//! `stowage-mover snapshots`.

use anyhow::Result;
use rustic_core::NoProgressBars;
use rustic_core::repofile::SnapshotFile;
use stowage_common::repo::{DamagedSnapshot, RepoAccess, damaged_summary, list_snapshots};

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

/// All readable snapshots, oldest first, and the damaged snapshot files (each named in
/// a warning). An absent repository has none; a damaged one is an error.
pub fn list(access: &RepoAccess) -> Result<(Vec<SnapInfo>, Vec<DamagedSnapshot>)> {
    let Some(repo) = access.open(NoProgressBars)? else {
        return Ok((Vec::new(), Vec::new()));
    };
    let listing = list_snapshots(&repo)?;
    listing.warn(&access.location);
    let mut infos: Vec<_> = listing.snapshots.iter().map(snap_info).collect();
    infos.sort_by_key(|s| s.time);
    Ok((infos, listing.damaged))
}

pub fn table(snaps: &[SnapInfo], damaged: &[DamagedSnapshot]) -> String {
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
    for d in damaged {
        out += &format!(
            "{}  DAMAGED: snapshots/{} cannot be read ({})\n",
            &d.id[..d.id.len().min(8)],
            d.id,
            d.error
        );
    }
    out += &format!("{} snapshot(s)", snaps.len());
    if let Some(skipped) = damaged_summary(damaged) {
        out += &format!(", {skipped}");
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_damaged_snapshot_files() {
        let d = DamagedSnapshot {
            id: "ab12cd34".repeat(8),
            error: "does not decrypt".into(),
        };
        let t = table(&[], &[d]);
        assert!(t.contains("DAMAGED: snapshots/ab12cd34ab12"), "{t}");
        assert!(
            t.ends_with("0 snapshot(s), 1 damaged snapshot file skipped: snapshots/ab12cd34\n"),
            "{t}"
        );
        assert!(table(&[], &[]).ends_with("0 snapshot(s)\n"));
    }
}
