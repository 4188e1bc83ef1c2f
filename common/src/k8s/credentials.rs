//! Credentials of one mover run. The central Secret (stowage namespace) holds a master
//! password; each repository's password is derived from it, so a mover Job in an app's
//! namespace sees only its own repository's password, never the master. `stowage-scheduler
//! repo-password <repository>` prints a derived password for the `restic` CLI.

use std::collections::BTreeMap;

use hmac::{KeyInit, Mac};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::contract::run_secret_keys as keys;
use super::contract::secret_keys;
use crate::env::ClusterEnv;
use crate::location::Location;

/// Domain separation: a derived password is useless for anything else.
const DERIVATION_CONTEXT: &str = "stowage repository password v1";

/// A Secret's value for `key`, as the programs read credentials: decoded (lossy
/// UTF-8), trailing newlines dropped (a `kubectl create secret --from-file` of an
/// edited file ends with one), `None` when absent or empty.
pub fn secret_value(secret: &k8s_openapi::api::core::v1::Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .map(|v| {
            String::from_utf8_lossy(&v.0)
                .trim_end_matches('\n')
                .to_string()
        })
        .filter(|v| !v.is_empty())
}

/// Why the central credentials Secret (`STOWAGE_CREDENTIALS_SECRET` in
/// `STOWAGE_SYSTEM_NAMESPACE`) gave no value: each names the Secret (`namespace/name`),
/// what failed and what to do; callers add what it means for them (a PVC that waits, a
/// pass that cannot open derived repositories).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CentralError {
    /// The API did not answer with it (permissions, timeout, a failing API server):
    /// `message` says which, from [`super::describe_kube_error`].
    #[error("{message}")]
    Unreadable { secret: String, message: String },
    #[error(
        "credentials Secret {secret} not found: create it (keys {master}, {ak}, {sk}; see the \
         README)",
        master = secret_keys::MASTER_PASSWORD,
        ak = secret_keys::MOVER_ACCESS_KEY_ID,
        sk = secret_keys::MOVER_SECRET_ACCESS_KEY
    )]
    NotFound { secret: String },
    #[error(
        "credentials Secret {secret} has no key {key} (or it is empty): add it (the keys are \
         {master}, {ak}, {sk})",
        master = secret_keys::MASTER_PASSWORD,
        ak = secret_keys::MOVER_ACCESS_KEY_ID,
        sk = secret_keys::MOVER_SECRET_ACCESS_KEY
    )]
    MissingKey { secret: String, key: String },
}

/// The central credentials Secret, as read once by a pass: the master password every
/// derived repository password comes from, the movers' and gc's S3 keys.
#[derive(Clone)]
pub struct CentralSecret {
    /// `namespace/name`, for messages.
    pub name: String,
    secret: Secret,
}

impl CentralSecret {
    /// What a lookup of the Secret found (`None`: it does not exist).
    pub fn found(cluster: &ClusterEnv, found: Option<Secret>) -> Result<Self, CentralError> {
        let name = central_name(cluster);
        match found {
            Some(secret) => Ok(Self { name, secret }),
            None => Err(CentralError::NotFound { secret: name }),
        }
    }

    /// The decoded value of `key` ([`secret_value`]).
    pub fn value(&self, key: &str) -> Option<String> {
        secret_value(&self.secret, key)
    }

    /// The value of `key`, which the caller cannot do without.
    pub fn require(&self, key: &str) -> Result<String, CentralError> {
        self.value(key).ok_or_else(|| CentralError::MissingKey {
            secret: self.name.clone(),
            key: key.into(),
        })
    }
}

fn central_name(cluster: &ClusterEnv) -> String {
    format!(
        "{}/{}",
        cluster.system_namespace, cluster.credentials_secret
    )
}

/// Reads the central credentials Secret (scheduler, gc, prewarm and its index all read
/// it this way).
pub async fn central_secret(
    client: &kube::Client,
    cluster: &ClusterEnv,
) -> Result<CentralSecret, CentralError> {
    let found = kube::Api::<Secret>::namespaced(client.clone(), &cluster.system_namespace)
        .get_opt(&cluster.credentials_secret)
        .await
        .map_err(|e| {
            let secret = central_name(cluster);
            CentralError::Unreadable {
                message: super::describe_kube_error(&e, &format!("get secret {secret}")),
                secret,
            }
        })?;
    CentralSecret::found(cluster, found)
}

/// The repository's identity for derivation: for S3, `bucket/prefix` (so moving the
/// endpoint or switching http/https keeps the password); for a local path, the path.
pub fn repository_identity(repository: &str) -> String {
    match Location::parse(repository, Some("https://s3.invalid")) {
        Ok(Location::S3(s3)) if s3.prefix.is_empty() => s3.bucket,
        Ok(Location::S3(s3)) => format!("{}/{}", s3.bucket, s3.prefix),
        Ok(Location::Local(p)) => p.to_string_lossy().trim_end_matches('/').to_string(),
        Err(_) => repository.trim().trim_end_matches('/').to_string(),
    }
}

/// The password of `repository`: HMAC-SHA256 keyed with the master password over the
/// repository identity, as 64 hex characters.
pub fn derive_repository_password(master: &str, repository: &str) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(master.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(DERIVATION_CONTEXT.as_bytes());
    mac.update(&[0]);
    mac.update(repository_identity(repository).as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What goes into a per-run Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunCredentials {
    pub repository: String,
    pub password: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub region: Option<String>,
    /// PEM bundle of extra trusted CAs ([`load_ca_bundle`]), key `ca.crt`: the mover
    /// Job mounts it ([`super::mover_job::MoverJobSpec::ca_from_secret`]). A ConfigMap
    /// cannot be mounted across namespaces, so the CA travels with the credentials.
    pub ca_bundle: Option<String>,
}

/// The CA bundle a program was given (`STOWAGE_CA_BUNDLE`, else `RESTIC_CACERT`: the
/// file the custom-ca component mounts), for its movers. None: no custom CA.
pub fn load_ca_bundle(
    common: &crate::env::CommonEnv,
    restic: &crate::env::ResticEnv,
) -> Result<Option<String>, String> {
    let (var, path) = match (&common.ca_bundle, &restic.restic_cacert) {
        (Some(p), _) => ("STOWAGE_CA_BUNDLE", p),
        (None, Some(p)) => ("RESTIC_CACERT", p),
        (None, None) => return Ok(None),
    };
    let pem = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "{var}={}: cannot read the CA bundle ({e}): check the ConfigMap the custom-ca \
             component mounts (key {})",
            path.display(),
            keys::CA_CERT
        )
    })?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "{var}={}: no PEM certificate in the CA bundle (expected -----BEGIN \
             CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(Some(pem))
}

/// The per-run Secret in the PVC's namespace, owned by the mover Job (deleted with it).
/// Its keys are restic's variables, read by the mover through `envFrom`.
pub fn run_secret(
    namespace: &str,
    name: &str,
    labels: BTreeMap<String, String>,
    owner: Option<OwnerReference>,
    creds: &RunCredentials,
) -> Secret {
    let mut data = BTreeMap::new();
    let mut put = |k: &str, v: &str| {
        data.insert(k.to_string(), ByteString(v.as_bytes().to_vec()));
    };
    put(keys::RESTIC_REPOSITORY, &creds.repository);
    put(keys::RESTIC_PASSWORD, &creds.password);
    put(keys::AWS_ACCESS_KEY_ID, &creds.access_key_id);
    put(keys::AWS_SECRET_ACCESS_KEY, &creds.secret_access_key);
    if let Some(r) = &creds.region {
        put(keys::AWS_DEFAULT_REGION, r);
    }
    if let Some(ca) = &creds.ca_bundle {
        put(keys::CA_CERT, ca);
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        immutable: Some(true),
        data: Some(data),
        ..Default::default()
    }
}

/// Creates the per-run Secret of a mover Job, owned by it (deleted with it): the
/// scheduler's backups and prewarm's restores start their Jobs this way. A Secret that
/// exists already (an earlier run of the same pass) is kept.
pub async fn create_run_secret(
    client: &kube::Client,
    job: &k8s_openapi::api::batch::v1::Job,
    op: super::naming::Operation,
    pvc_uid: &str,
    creds: &RunCredentials,
) -> Result<(), String> {
    use kube::ResourceExt;
    let ns = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let owner = OwnerReference {
        api_version: "batch/v1".into(),
        kind: "Job".into(),
        name: name.clone(),
        uid: job.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let secret = run_secret(
        &ns,
        &name,
        super::mover_job::mover_labels(op, pvc_uid),
        Some(owner),
        creds,
    );
    match kube::Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&kube::api::PostParams::default(), &secret)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if super::is_status(&e, 409) => Ok(()),
        Err(e) => Err(super::describe_kube_error(
            &e,
            &format!("create secret {ns}/{name}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_passwords_are_stable_and_differ_per_repository() {
        let a = derive_repository_password("master", "s3:https://s3.lan/backups/db/pg");
        assert_eq!(a.len(), 64);
        assert_eq!(
            a,
            derive_repository_password("master", "s3:https://s3.lan/backups/db/pg")
        );
        // Known value: changing the derivation would lock users out of their backups.
        assert_eq!(
            a,
            derive_repository_password("master", "s3:http://other-endpoint:9000/backups/db/pg/")
        );
        assert_ne!(
            a,
            derive_repository_password("master", "s3:https://s3.lan/backups/db/pg2")
        );
        assert_ne!(
            a,
            derive_repository_password("master2", "s3:https://s3.lan/backups/db/pg")
        );
        assert_eq!(
            repository_identity("s3://backups/db/pg"),
            repository_identity("s3:s3.lan/backups/db/pg")
        );
    }

    #[test]
    fn derivation_is_pinned() {
        // A fixed vector: if this changes, every existing repository's password changes.
        assert_eq!(
            derive_repository_password("correct horse", "s3:https://s3.lan/b/ns/pvc"),
            PINNED
        );
    }
    // Computed independently: python3 -c "import hmac,hashlib; print(hmac.new(b'correct horse',
    // b'stowage repository password v1\\x00b/ns/pvc', hashlib.sha256).hexdigest())"
    const PINNED: &str = "b8e1393b2ba5862e2c5203f9636fff5e0c3e411e6c95c5d7935d433f834234f4";

    #[test]
    fn secret_values_are_decoded_without_trailing_newlines_and_empty_is_absent() {
        let secret: k8s_openapi::api::core::v1::Secret =
            serde_json::from_value(serde_json::json!({
                "data": {"a": "cGFzcwo=", "b": "", "c": "YQpiCgo="}
            }))
            .unwrap();
        assert_eq!(secret_value(&secret, "a").as_deref(), Some("pass"));
        assert_eq!(secret_value(&secret, "b"), None);
        assert_eq!(secret_value(&secret, "c").as_deref(), Some("a\nb"));
        assert_eq!(secret_value(&secret, "missing"), None);
    }

    #[test]
    fn run_secret_carries_restic_variables() {
        let s = run_secret(
            "db",
            "stowage-backup-pg-0123456789",
            BTreeMap::new(),
            None,
            &RunCredentials {
                repository: "s3:https://s3.lan/b/db/pg".into(),
                password: "pw".into(),
                access_key_id: "AK".into(),
                secret_access_key: "SK".into(),
                region: Some("garage".into()),
                ca_bundle: None,
            },
        );
        let data = s.data.unwrap();
        let keys: Vec<_> = data.keys().cloned().collect();
        assert_eq!(
            keys,
            vec![
                "AWS_ACCESS_KEY_ID",
                "AWS_DEFAULT_REGION",
                "AWS_SECRET_ACCESS_KEY",
                "RESTIC_PASSWORD",
                "RESTIC_REPOSITORY"
            ]
        );
        assert_eq!(data["RESTIC_PASSWORD"].0, b"pw");
        assert_eq!(s.immutable, Some(true));
    }

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    #[test]
    fn run_secret_carries_the_ca_bundle_for_the_mover() {
        let s = run_secret(
            "db",
            "stowage-backup-pg-0123456789",
            BTreeMap::new(),
            None,
            &RunCredentials {
                repository: "s3:https://s3.lan/b/db/pg".into(),
                password: "pw".into(),
                access_key_id: "AK".into(),
                secret_access_key: "SK".into(),
                region: None,
                ca_bundle: Some(PEM.into()),
            },
        );
        assert_eq!(s.data.unwrap()["ca.crt"].0, PEM.as_bytes());
    }

    #[test]
    fn ca_bundle_is_read_from_the_programs_own_setting() {
        use crate::env::{CommonEnv, ResticEnv};
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ca.crt");
        std::fs::write(&file, PEM).unwrap();
        let none = load_ca_bundle(&CommonEnv::default(), &ResticEnv::default());
        assert_eq!(none, Ok(None));
        let common = CommonEnv {
            ca_bundle: Some(file.clone()),
            ..Default::default()
        };
        assert_eq!(
            load_ca_bundle(&common, &ResticEnv::default()),
            Ok(Some(PEM.into()))
        );
        let restic = ResticEnv {
            restic_cacert: Some(file.clone()),
            ..Default::default()
        };
        assert_eq!(
            load_ca_bundle(&CommonEnv::default(), &restic),
            Ok(Some(PEM.into()))
        );
        let missing = CommonEnv {
            ca_bundle: Some(dir.path().join("absent")),
            ..Default::default()
        };
        let err = load_ca_bundle(&missing, &ResticEnv::default()).unwrap_err();
        assert!(
            err.contains("STOWAGE_CA_BUNDLE") && err.contains("absent"),
            "{err}"
        );
        std::fs::write(&file, "not a certificate").unwrap();
        let err = load_ca_bundle(&common, &ResticEnv::default()).unwrap_err();
        assert!(err.contains("PEM"), "{err}");
    }

    fn secret(data: serde_json::Value) -> Secret {
        serde_json::from_value(serde_json::json!({ "data": data })).unwrap()
    }

    #[test]
    fn a_missing_central_secret_is_named_with_what_to_create() {
        let cluster = ClusterEnv::default();
        let e = CentralSecret::found(&cluster, None).err().unwrap();
        assert_eq!(
            e,
            CentralError::NotFound {
                secret: "stowage/stowage-credentials".into()
            }
        );
        let text = e.to_string();
        for needle in [
            "credentials Secret stowage/stowage-credentials not found",
            "create it",
            "master-password",
            "mover-access-key-id",
            "mover-secret-access-key",
        ] {
            assert!(text.contains(needle), "{needle:?} in {text}");
        }
        let other = ClusterEnv {
            system_namespace: "backup-system".into(),
            credentials_secret: "creds".into(),
            ..Default::default()
        };
        let text = CentralSecret::found(&other, None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            text.contains("Secret backup-system/creds not found"),
            "{text}"
        );
    }

    #[test]
    fn central_secret_values_are_decoded_and_a_missing_or_empty_key_is_named() {
        // master-password "master\n", mover-access-key-id "AK", mover-secret-access-key "".
        let found = secret(serde_json::json!({
            "master-password": "bWFzdGVyCg==",
            "mover-access-key-id": "QUs=",
            "mover-secret-access-key": "",
        }));
        let c = CentralSecret::found(&ClusterEnv::default(), Some(found)).unwrap();
        assert_eq!(c.name, "stowage/stowage-credentials");
        assert_eq!(c.require(secret_keys::MASTER_PASSWORD).unwrap(), "master");
        assert_eq!(
            c.value(secret_keys::MOVER_ACCESS_KEY_ID).as_deref(),
            Some("AK")
        );
        assert_eq!(c.value(secret_keys::MOVER_SECRET_ACCESS_KEY), None);
        assert_eq!(c.value(secret_keys::GC_ACCESS_KEY_ID), None);
        for key in [
            secret_keys::MOVER_SECRET_ACCESS_KEY,
            secret_keys::GC_SECRET_ACCESS_KEY,
        ] {
            let e = c.require(key).unwrap_err();
            assert_eq!(
                e,
                CentralError::MissingKey {
                    secret: "stowage/stowage-credentials".into(),
                    key: key.into()
                }
            );
            let text = e.to_string();
            for needle in [
                format!("credentials Secret stowage/stowage-credentials has no key {key}"),
                "add it".into(),
            ] {
                assert!(text.contains(&needle), "{needle:?} in {text}");
            }
        }
    }
}
