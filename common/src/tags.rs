//! Snapshot tags that identify the volume a snapshot came from. The mover writes
//! them; the scheduler's first-backup guard and gc read them.

pub const NAMESPACE: &str = "namespace";
pub const PVC: &str = "pvc";
pub const PVC_UID: &str = "pvc-uid";

/// `key=value` tags for the given identity (Kubernetes names and UIDs contain neither
/// `,` nor `=`, so the form is unambiguous).
pub fn volume_tags(
    namespace: Option<&str>,
    pvc: Option<&str>,
    pvc_uid: Option<&str>,
) -> Vec<String> {
    [(NAMESPACE, namespace), (PVC, pvc), (PVC_UID, pvc_uid)]
        .into_iter()
        .filter_map(|(k, v)| v.filter(|v| !v.is_empty()).map(|v| format!("{k}={v}")))
        .collect()
}

/// Extra tags from a comma-separated list (`STOWAGE_EXTRA_TAGS`), blanks dropped.
pub fn extra_tags(list: Option<&str>) -> Vec<String> {
    list.unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

/// The value of tag `key` in a snapshot's tags.
pub fn tag_value<'a>(tags: &'a [String], key: &str) -> Option<&'a str> {
    tags.iter()
        .find_map(|t| t.strip_prefix(key)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip() {
        let t = volume_tags(Some("db"), Some("data-pg-0"), Some("4f1c"));
        assert_eq!(t, vec!["namespace=db", "pvc=data-pg-0", "pvc-uid=4f1c"]);
        assert_eq!(tag_value(&t, PVC_UID), Some("4f1c"));
        assert_eq!(tag_value(&t, PVC), Some("data-pg-0"));
        assert_eq!(volume_tags(None, Some(""), None), Vec::<String>::new());
        assert_eq!(
            extra_tags(Some("copy-method=snapshot, ,pre-hook=Succeeded")),
            vec!["copy-method=snapshot", "pre-hook=Succeeded"]
        );
        assert!(extra_tags(None).is_empty());
    }
}
