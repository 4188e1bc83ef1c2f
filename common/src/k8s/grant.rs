//! Consent for cross-namespace use of a repository, in the manner of Gateway API's
//! ReferenceGrant: the namespace that owns the data grants it, by an annotation on its
//! own Namespace object ([`GRANT_ANNOTATION`]). Without it, a PVC annotation naming
//! another namespace's repository and a `Restore` with another `sourceNamespace` are
//! refused with an Event that says how to grant.

use std::collections::BTreeMap;

/// Annotation on the *source* Namespace: comma-separated namespaces that may back up
/// into or restore from its repositories, or `*` for every namespace.
pub const GRANT_ANNOTATION: &str = "stowage.io/grant-repositories-to";

/// Whether `source` (whose Namespace annotations are `source_annotations`) lets
/// `requester` use its repositories. A namespace always may use its own.
pub fn allows(
    source: &str,
    source_annotations: Option<&BTreeMap<String, String>>,
    requester: &str,
) -> bool {
    if source == requester {
        return true;
    }
    source_annotations
        .and_then(|a| a.get(GRANT_ANNOTATION))
        .is_some_and(|v| {
            v.split(',')
                .map(str::trim)
                .any(|n| n == "*" || n == requester)
        })
}

/// The fix, for the Event that reports a refusal.
pub fn how_to_grant(source: &str, requester: &str) -> String {
    format!(
        "namespace {source} has not granted namespace {requester} the use of its \
         repositories: if it should, annotate it: kubectl annotate namespace {source} \
         {GRANT_ANNOTATION}={requester}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(v: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(GRANT_ANNOTATION.to_string(), v.to_string())])
    }

    #[test]
    fn own_namespace_needs_no_grant() {
        assert!(allows("app", None, "app"));
    }

    #[test]
    fn other_namespaces_need_a_grant_naming_them() {
        assert!(!allows("app", None, "evil"));
        assert!(!allows("app", Some(&BTreeMap::new()), "evil"));
        assert!(!allows("app", Some(&ann("staging, other")), "evil"));
        assert!(allows("app", Some(&ann("staging, evil")), "evil"));
        assert!(allows("app", Some(&ann("*")), "evil"));
        // A prefix is not a name.
        assert!(!allows("app", Some(&ann("evil-twin")), "evil"));
    }

    #[test]
    fn the_fix_names_both_sides() {
        let m = how_to_grant("app", "evil");
        assert!(m.contains("kubectl annotate namespace app stowage.io/grant-repositories-to=evil"));
    }
}
