//! The committed CRD manifest is the one generated from the Rust types.

use stowage_common::k8s::restore_kind::crd_yaml;

#[test]
fn committed_crd_matches_the_generated_one() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../kustomize/app/crd-restore.yaml"
    );
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == crd_yaml(),
        "kustomize/app/crd-restore.yaml differs from the CRD generated from \
         common/src/k8s/restore_kind.rs. Regenerate it:\n  \
         cargo run -p stowage-prewarm -- crd > kustomize/app/crd-restore.yaml"
    );
}
