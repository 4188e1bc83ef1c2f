//! The mover Job: one backup or restore of one PVC, built from plain data so that the
//! scheduler (backups), prewarm (restores) and the manual templates agree.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, EmptyDirVolumeSource, EnvFromSource, EnvVar, KeyToPath,
    NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec,
    ResourceRequirements, SeccompProfile, SecretEnvSource, SecretVolumeSource, SecurityContext,
    Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::contract::{self, app, label, run_secret_keys};
use super::naming::Operation;
use crate::env::PREFIX as ENV;

/// Defaults of a mover's resources (overridable per policy and per PVC).
pub const DEFAULT_MOVER_MEMORY: &str = "512Mi";
pub const DEFAULT_MOVER_CPU: &str = "500m";
/// Finished Jobs stay a day: longer than any scheduler interval, so the scheduler reads
/// every result before the Job is gone.
pub const DEFAULT_TTL_AFTER_FINISHED: i32 = 24 * 3600;
/// One retry of the pod inside the Job for transient failures; the next scheduled
/// time retries anything else.
pub const DEFAULT_BACKOFF_LIMIT: i32 = 1;
/// UID/GID of the distroless `nonroot` user, for restores into fresh volumes.
pub const NONROOT_ID: i64 = 65532;

/// Where the mover pod may run.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Placement {
    /// Any node (network storage not in use).
    #[default]
    Anywhere,
    /// On this node (the node of the pod using a ReadWriteOnce volume).
    Node(String),
    /// The PV's own node affinity (node-local volumes).
    Affinity(NodeSelector),
}

/// Whom the mover runs as.
#[derive(Debug, Clone, PartialEq)]
pub enum RunAs {
    /// The app's user: passes Pod Security `restricted`. `groups` become supplemental
    /// groups (the app's fsGroup: group access without re-owning files).
    User {
        uid: i64,
        gid: i64,
        groups: Vec<i64>,
    },
    /// Root with only the capabilities the operation needs; only where the namespace
    /// opts in (or in the stowage namespace).
    Privileged,
}

/// Everything that varies between mover Jobs.
#[derive(Debug, Clone, PartialEq)]
pub struct MoverJobSpec {
    pub operation: Operation,
    pub name: String,
    pub namespace: String,
    pub pvc: String,
    pub pvc_uid: String,
    /// The claim the mover mounts when it is not `pvc` itself: the temporary PVC of the
    /// `Snapshot` and `Clone` copy methods (`pvc` stays the identity recorded in tags).
    pub claim: Option<String>,
    pub image: String,
    /// Secret with RESTIC_REPOSITORY, RESTIC_PASSWORD and S3 keys (`envFrom`).
    pub secret: String,
    /// The Secret holds a CA bundle (key `ca.crt`, see
    /// [`super::credentials::RunCredentials::ca_bundle`]): mount it and point
    /// `STOWAGE_CA_BUNDLE` at it.
    pub ca_from_secret: bool,
    pub placement: Placement,
    pub tolerations: Vec<Toleration>,
    pub run_as: RunAs,
    pub memory: String,
    pub cpu: String,
    pub active_deadline_seconds: i64,
    pub ttl_seconds_after_finished: i32,
    pub backoff_limit: i32,
    /// Mover arguments after the subcommand (e.g. `--snapshot <id>` for restores).
    pub args: Vec<String>,
    /// Extra `STOWAGE_*`/restic settings, in order (excludes, allow-http, ...).
    pub env: Vec<(String, String)>,
    /// Labels to add (e.g. `app.kubernetes.io/instance`).
    pub extra_labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub owner: Option<OwnerReference>,
}

impl MoverJobSpec {
    /// A spec with the defaults; callers set placement, identity and overrides.
    pub fn new(
        operation: Operation,
        name: &str,
        namespace: &str,
        pvc: &str,
        pvc_uid: &str,
        image: &str,
        secret: &str,
    ) -> Self {
        Self {
            operation,
            name: name.into(),
            namespace: namespace.into(),
            pvc: pvc.into(),
            pvc_uid: pvc_uid.into(),
            claim: None,
            image: image.into(),
            secret: secret.into(),
            ca_from_secret: false,
            placement: Placement::Anywhere,
            tolerations: Vec::new(),
            run_as: RunAs::User {
                uid: NONROOT_ID,
                gid: NONROOT_ID,
                groups: Vec::new(),
            },
            memory: DEFAULT_MOVER_MEMORY.into(),
            cpu: DEFAULT_MOVER_CPU.into(),
            active_deadline_seconds: active_deadline_for(0),
            ttl_seconds_after_finished: DEFAULT_TTL_AFTER_FINISHED,
            backoff_limit: DEFAULT_BACKOFF_LIMIT,
            args: Vec::new(),
            env: Vec::new(),
            extra_labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            owner: None,
        }
    }
}

/// Default deadline for a volume of `capacity_bytes`: an hour, plus the time to move the
/// whole volume at 8 MiB/s, so a hung run ends but a big one on a fast link finishes.
/// Slower links set [`deadline`]'s policy or PVC value.
pub fn active_deadline_for(capacity_bytes: u64) -> i64 {
    3600 + (capacity_bytes / (8 << 20)) as i64
}

/// The activeDeadlineSeconds of a mover Job: the PVC's annotation
/// (`stowage.io/mover-deadline`) wins over the policy's `limits.jobDeadline`, which wins
/// over the computed [`active_deadline_for`]. Err: the annotation is not a duration
/// (the policy's value was checked when the policies were read); the message names
/// the annotation and the fix.
pub fn deadline(
    capacity_bytes: u64,
    policy: Option<&str>,
    annotation: Option<&str>,
) -> Result<i64, String> {
    if let Some(a) = annotation.filter(|a| !a.trim().is_empty()) {
        return super::policy::parse_job_deadline(a)
            .map(|s| s as i64)
            .map_err(|e| {
                format!(
                    "annotation {}: {e}; fix or remove it",
                    contract::user::MOVER_DEADLINE
                )
            });
    }
    if let Some(p) = policy
        && let Ok(s) = super::policy::parse_job_deadline(p)
    {
        return Ok(s as i64);
    }
    Ok(active_deadline_for(capacity_bytes))
}

/// Labels of every mover Job and pod: `app.kubernetes.io/*` plus what finds them again.
pub fn mover_labels(op: Operation, pvc_uid: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (app::NAME.into(), "stowage-mover".into()),
        (app::COMPONENT.into(), op.as_str().into()),
        (app::PART_OF.into(), app::STOWAGE.into()),
        (app::MANAGED_BY.into(), app::STOWAGE.into()),
        (label::PVC_UID.into(), pvc_uid.into()),
        (label::OPERATION.into(), op.as_str().into()),
    ])
}

/// Label selector for all of stowage's mover Jobs.
pub fn mover_selector() -> String {
    format!(
        "{}={},{}=stowage-mover",
        app::MANAGED_BY,
        app::STOWAGE,
        app::NAME
    )
}

/// What one backup adds to its mover's environment (a restore adds nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackupEnv {
    /// Exclude globs, comma separated (policy and PVC annotation).
    pub excludes: Option<String>,
    /// Upload limit in KiB/s.
    pub upload_kib_per_sec: Option<u64>,
    /// The user let this PVC continue another PVC's history.
    pub adopt_history: bool,
    /// Snapshot tags of the consistency steps (copy method, hook outcomes).
    pub extra_tags: Vec<String>,
}

/// The environment of a mover Job ([`MoverJobSpec::env`]), for the scheduler's backups,
/// prewarm's restores and the manual restore alike: the mover reaches S3 the way the
/// program that starts it does (plain http, path style, endpoint) and logs at its level;
/// a backup adds its own settings.
pub fn mover_env(
    restic: &crate::env::ResticEnv,
    common: &crate::env::CommonEnv,
    backup: Option<&BackupEnv>,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut put = |k: &str, v: String| env.push((k.into(), v));
    if common.allow_http {
        put("STOWAGE_ALLOW_HTTP", "true".into());
    }
    if let Some(p) = common.s3_path_style {
        put("STOWAGE_S3_PATH_STYLE", p.to_string());
    }
    if let Some(e) = &restic.aws_endpoint_url_s3 {
        put("AWS_ENDPOINT_URL_S3", e.clone());
    }
    put("STOWAGE_LOG", common.log.clone());
    let Some(b) = backup else {
        return env;
    };
    if let Some(x) = &b.excludes {
        put("STOWAGE_EXCLUDES", x.clone());
    }
    if let Some(l) = b.upload_kib_per_sec {
        put("STOWAGE_LIMIT_UPLOAD", l.to_string());
    }
    if b.adopt_history {
        put("STOWAGE_ADOPT_HISTORY", "true".into());
    }
    if !b.extra_tags.is_empty() {
        put("STOWAGE_EXTRA_TAGS", b.extra_tags.join(","));
    }
    env
}

/// The Job.
pub fn mover_job(s: &MoverJobSpec) -> Job {
    let mut labels = mover_labels(s.operation, &s.pvc_uid);
    labels.extend(s.extra_labels.clone());
    let mut pod_labels = labels.clone();
    // Istio reads the label form in recent versions, the annotation in older ones.
    pod_labels.insert("sidecar.istio.io/inject".into(), "false".into());
    let mut pod_annotations = BTreeMap::from([
        ("sidecar.istio.io/inject".to_string(), "false".to_string()),
        ("linkerd.io/inject".to_string(), "disabled".to_string()),
    ]);
    pod_annotations.extend(s.annotations.clone());

    let backup = s.operation == Operation::Backup;
    let mut env = vec![
        env_var("STOWAGE_SOURCE", contract::MOVER_DATA_PATH),
        env_var("STOWAGE_RESULT_FILE", contract::TERMINATION_MESSAGE_PATH),
        env_var("STOWAGE_NAMESPACE", &s.namespace),
        env_var("STOWAGE_PVC", &s.pvc),
        env_var("STOWAGE_PVC_UID", &s.pvc_uid),
        env_var("TMPDIR", contract::MOVER_TMP_PATH),
    ];
    debug_assert!(ENV == "STOWAGE_");
    env.extend(s.env.iter().map(|(k, v)| env_var(k, v)));
    let ca_file = format!("{}/{}", contract::MOVER_CA_DIR, run_secret_keys::CA_CERT);
    if s.ca_from_secret {
        env.push(env_var("STOWAGE_CA_BUNDLE", &ca_file));
    }
    let mut mounts = vec![
        VolumeMount {
            name: "data".into(),
            mount_path: contract::MOVER_DATA_PATH.into(),
            read_only: Some(backup),
            ..Default::default()
        },
        VolumeMount {
            name: "tmp".into(),
            mount_path: contract::MOVER_TMP_PATH.into(),
            ..Default::default()
        },
    ];
    let mut volumes = vec![
        Volume {
            name: "data".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: s.claim.clone().unwrap_or_else(|| s.pvc.clone()),
                read_only: Some(backup),
            }),
            ..Default::default()
        },
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity("1Gi".into())),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    if s.ca_from_secret {
        // Only the CA key: the credentials reach the mover as environment variables.
        mounts.push(VolumeMount {
            name: "ca".into(),
            mount_path: contract::MOVER_CA_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
        volumes.push(Volume {
            name: "ca".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(s.secret.clone()),
                items: Some(vec![KeyToPath {
                    key: run_secret_keys::CA_CERT.into(),
                    path: run_secret_keys::CA_CERT.into(),
                    ..Default::default()
                }]),
                default_mode: Some(0o444),
                optional: Some(false),
                ..Default::default()
            }),
            ..Default::default()
        });
    }

    let (pod_sc, container_sc) = security(&s.run_as, s.operation);
    let mut args = vec![s.operation.as_str().to_string()];
    args.extend(s.args.iter().cloned());

    let container = Container {
        name: "mover".into(),
        image: Some(s.image.clone()),
        args: Some(args),
        env: Some(env),
        env_from: Some(vec![EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: s.secret.clone(),
                optional: Some(false),
            }),
            ..Default::default()
        }]),
        volume_mounts: Some(mounts),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity(s.cpu.clone())),
                ("memory".to_string(), Quantity(s.memory.clone())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_string(),
                Quantity(s.memory.clone()),
            )])),
            ..Default::default()
        }),
        security_context: Some(container_sc),
        termination_message_path: Some(contract::TERMINATION_MESSAGE_PATH.into()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    };

    let affinity = match &s.placement {
        Placement::Anywhere => None,
        Placement::Node(node) => Some(NodeSelector {
            node_selector_terms: vec![NodeSelectorTerm {
                match_fields: Some(vec![NodeSelectorRequirement {
                    key: "metadata.name".into(),
                    operator: "In".into(),
                    values: Some(vec![node.clone()]),
                }]),
                ..Default::default()
            }],
        }),
        Placement::Affinity(sel) => Some(sel.clone()),
    }
    .map(|required| Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(required),
            ..Default::default()
        }),
        ..Default::default()
    });

    let pod = PodSpec {
        restart_policy: Some("Never".into()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(pod_sc),
        affinity,
        tolerations: (!s.tolerations.is_empty()).then(|| s.tolerations.clone()),
        containers: vec![container],
        volumes: Some(volumes),
        ..Default::default()
    };

    Job {
        metadata: ObjectMeta {
            name: Some(s.name.clone()),
            namespace: Some(s.namespace.clone()),
            labels: Some(labels.clone()),
            annotations: (!s.annotations.is_empty()).then(|| s.annotations.clone()),
            owner_references: s.owner.clone().map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(s.backoff_limit),
            active_deadline_seconds: Some(s.active_deadline_seconds),
            ttl_seconds_after_finished: Some(s.ttl_seconds_after_finished),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(pod_annotations),
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn env_var(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// Capabilities a privileged mover needs: reading every file for a backup; writing
/// anywhere and restoring owners, modes (setuid included) and times for a restore.
pub fn privileged_capabilities(op: Operation) -> Vec<String> {
    match op {
        Operation::Backup => vec!["DAC_READ_SEARCH".into()],
        Operation::Restore => ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID"]
            .map(String::from)
            .to_vec(),
    }
}

fn security(run_as: &RunAs, op: Operation) -> (PodSecurityContext, SecurityContext) {
    let seccomp = Some(SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..Default::default()
    });
    let (pod, add) = match run_as {
        RunAs::User { uid, gid, groups } => (
            PodSecurityContext {
                run_as_user: Some(*uid),
                run_as_group: Some(*gid),
                run_as_non_root: Some(true),
                supplemental_groups: (!groups.is_empty()).then(|| groups.clone()),
                seccomp_profile: seccomp.clone(),
                ..Default::default()
            },
            None,
        ),
        RunAs::Privileged => (
            PodSecurityContext {
                run_as_user: Some(0),
                run_as_group: Some(0),
                run_as_non_root: Some(false),
                seccomp_profile: seccomp.clone(),
                ..Default::default()
            },
            Some(privileged_capabilities(op)),
        ),
    };
    let container = SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add,
        }),
        seccomp_profile: seccomp,
        ..Default::default()
    };
    (pod, container)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::pod_security::restricted_violations;
    use serde_json::json;

    fn spec() -> MoverJobSpec {
        let mut s = MoverJobSpec::new(
            Operation::Backup,
            "stowage-backup-data-pg-0-0123456789",
            "db",
            "data-pg-0",
            "uid-1",
            "ghcr.io/stowage/stowage-mover:0.1.0",
            "stowage-backup-data-pg-0-0123456789",
        );
        s.placement = Placement::Node("node-a".into());
        s.tolerations = vec![Toleration {
            key: Some("dedicated".into()),
            operator: Some("Equal".into()),
            value: Some("db".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        }];
        s.run_as = RunAs::User {
            uid: 999,
            gid: 999,
            groups: vec![2000],
        };
        s.env = vec![("STOWAGE_EXCLUDES".into(), "*.tmp".into())];
        s
    }

    #[test]
    fn backup_job_matches_the_expected_manifest() {
        let job = serde_json::to_value(mover_job(&spec())).unwrap();
        let labels = json!({
            "app.kubernetes.io/component": "backup",
            "app.kubernetes.io/managed-by": "stowage",
            "app.kubernetes.io/name": "stowage-mover",
            "app.kubernetes.io/part-of": "stowage",
            "stowage.io/operation": "backup",
            "stowage.io/pvc-uid": "uid-1"
        });
        let mut pod_labels = labels.clone();
        pod_labels["sidecar.istio.io/inject"] = json!("false");
        let expected = json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": "stowage-backup-data-pg-0-0123456789",
                "namespace": "db",
                "labels": labels
            },
            "spec": {
                "backoffLimit": 1,
                "activeDeadlineSeconds": 3600,
                "ttlSecondsAfterFinished": 86400,
                "template": {
                    "metadata": {
                        "labels": pod_labels,
                        "annotations": {
                            "linkerd.io/inject": "disabled",
                            "sidecar.istio.io/inject": "false"
                        }
                    },
                    "spec": {
                        "restartPolicy": "Never",
                        "automountServiceAccountToken": false,
                        "enableServiceLinks": false,
                        "securityContext": {
                            "runAsUser": 999,
                            "runAsGroup": 999,
                            "runAsNonRoot": true,
                            "supplementalGroups": [2000],
                            "seccompProfile": {"type": "RuntimeDefault"}
                        },
                        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [{"matchFields": [
                                {"key": "metadata.name", "operator": "In", "values": ["node-a"]}
                            ]}]
                        }}},
                        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}],
                        "containers": [{
                            "name": "mover",
                            "image": "ghcr.io/stowage/stowage-mover:0.1.0",
                            "args": ["backup"],
                            "env": [
                                {"name": "STOWAGE_SOURCE", "value": "/data"},
                                {"name": "STOWAGE_RESULT_FILE", "value": "/dev/termination-log"},
                                {"name": "STOWAGE_NAMESPACE", "value": "db"},
                                {"name": "STOWAGE_PVC", "value": "data-pg-0"},
                                {"name": "STOWAGE_PVC_UID", "value": "uid-1"},
                                {"name": "TMPDIR", "value": "/tmp"},
                                {"name": "STOWAGE_EXCLUDES", "value": "*.tmp"}
                            ],
                            "envFrom": [{"secretRef": {"name": "stowage-backup-data-pg-0-0123456789", "optional": false}}],
                            "volumeMounts": [
                                {"name": "data", "mountPath": "/data", "readOnly": true},
                                {"name": "tmp", "mountPath": "/tmp"}
                            ],
                            "resources": {
                                "requests": {"cpu": "500m", "memory": "512Mi"},
                                "limits": {"memory": "512Mi"}
                            },
                            "securityContext": {
                                "allowPrivilegeEscalation": false,
                                "readOnlyRootFilesystem": true,
                                "capabilities": {"drop": ["ALL"]},
                                "seccompProfile": {"type": "RuntimeDefault"}
                            },
                            "terminationMessagePath": "/dev/termination-log",
                            "terminationMessagePolicy": "FallbackToLogsOnError"
                        }],
                        "volumes": [
                            {"name": "data", "persistentVolumeClaim": {"claimName": "data-pg-0", "readOnly": true}},
                            {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}
                        ]
                    }
                }
            }
        });
        assert_eq!(
            job,
            expected,
            "\n{}",
            serde_json::to_string_pretty(&job).unwrap()
        );
    }

    #[test]
    fn mover_with_a_custom_ca_mounts_it_from_its_secret() {
        let mut s = spec();
        s.operation = Operation::Restore;
        s.ca_from_secret = true;
        let job = serde_json::to_value(mover_job(&s)).unwrap();
        let pod = &job["spec"]["template"]["spec"];
        let ctr = &pod["containers"][0];
        assert_eq!(
            ctr["env"].as_array().unwrap().last().unwrap(),
            &json!({"name": "STOWAGE_CA_BUNDLE", "value": "/etc/stowage/ca/ca.crt"})
        );
        assert_eq!(
            ctr["volumeMounts"],
            json!([
                {"name": "data", "mountPath": "/data", "readOnly": false},
                {"name": "tmp", "mountPath": "/tmp"},
                {"name": "ca", "mountPath": "/etc/stowage/ca", "readOnly": true}
            ])
        );
        assert_eq!(
            pod["volumes"],
            json!([
                {"name": "data", "persistentVolumeClaim": {"claimName": "data-pg-0", "readOnly": false}},
                {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
                {"name": "ca", "secret": {
                    "secretName": "stowage-backup-data-pg-0-0123456789",
                    "items": [{"key": "ca.crt", "path": "ca.crt"}],
                    "defaultMode": 0o444,
                    "optional": false
                }}
            ])
        );
        // Still admitted under `restricted` (Secret volumes are allowed).
        let typed = mover_job(&s).spec.unwrap().template.spec.unwrap();
        assert_eq!(restricted_violations(&typed), Vec::<String>::new());
        // Without a CA: nothing of it.
        s.ca_from_secret = false;
        let job = serde_json::to_value(mover_job(&s)).unwrap();
        let text = job.to_string();
        assert!(!text.contains("STOWAGE_CA_BUNDLE") && !text.contains("ca.crt"));
    }

    #[test]
    fn default_mover_passes_pod_security_restricted() {
        let job = mover_job(&spec());
        let pod = job.spec.unwrap().template.spec.unwrap();
        assert_eq!(restricted_violations(&pod), Vec::<String>::new());
        let s = MoverJobSpec::new(Operation::Restore, "j", "ns", "p", "u", "img", "sec");
        let pod = mover_job(&s).spec.unwrap().template.spec.unwrap();
        assert_eq!(restricted_violations(&pod), Vec::<String>::new());
        // The restore mounts the volume writable; the backup read-only.
        let mounts = pod.containers[0].volume_mounts.clone().unwrap();
        assert_eq!(mounts[0].read_only, Some(false));
        assert_eq!(
            pod.volumes.unwrap()[0]
                .persistent_volume_claim
                .as_ref()
                .unwrap()
                .read_only,
            Some(false)
        );
    }

    #[test]
    fn fs_group_is_never_set() {
        for run_as in [
            RunAs::Privileged,
            RunAs::User {
                uid: 1000,
                gid: 1000,
                groups: vec![1000],
            },
        ] {
            let mut s = spec();
            s.run_as = run_as;
            let pod = mover_job(&s).spec.unwrap().template.spec.unwrap();
            assert_eq!(pod.security_context.unwrap().fs_group, None);
        }
    }

    #[test]
    fn privileged_mover_is_root_with_only_the_needed_capabilities() {
        let mut s = spec();
        s.run_as = RunAs::Privileged;
        let pod = mover_job(&s).spec.unwrap().template.spec.unwrap();
        let sc = pod.containers[0].security_context.clone().unwrap();
        assert_eq!(
            sc.capabilities.unwrap().add,
            Some(vec!["DAC_READ_SEARCH".to_string()])
        );
        assert_eq!(pod.security_context.as_ref().unwrap().run_as_user, Some(0));
        // Not admitted under `restricted`: that is why it needs the namespace opt-in.
        assert!(!restricted_violations(&pod).is_empty());
        s.operation = Operation::Restore;
        let pod = mover_job(&s).spec.unwrap().template.spec.unwrap();
        let add = pod.containers[0]
            .security_context
            .clone()
            .unwrap()
            .capabilities
            .unwrap()
            .add
            .unwrap();
        assert_eq!(add, vec!["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID"]);
    }

    #[test]
    fn node_local_volumes_follow_the_pv_affinity() {
        let sel = NodeSelector {
            node_selector_terms: vec![NodeSelectorTerm {
                match_expressions: Some(vec![NodeSelectorRequirement {
                    key: "kubernetes.io/hostname".into(),
                    operator: "In".into(),
                    values: Some(vec!["node-b".into()]),
                }]),
                ..Default::default()
            }],
        };
        let mut s = spec();
        s.placement = Placement::Affinity(sel.clone());
        let pod = mover_job(&s).spec.unwrap().template.spec.unwrap();
        assert_eq!(
            pod.affinity
                .unwrap()
                .node_affinity
                .unwrap()
                .required_during_scheduling_ignored_during_execution,
            Some(sel)
        );
        s.placement = Placement::Anywhere;
        assert!(
            mover_job(&s)
                .spec
                .unwrap()
                .template
                .spec
                .unwrap()
                .affinity
                .is_none()
        );
    }

    #[test]
    fn backup_of_a_copy_mounts_the_temporary_claim_but_keeps_the_identity() {
        let mut s = spec();
        s.claim = Some("stowage-backup-data-pg-0-0123456789".into());
        let pod = mover_job(&s).spec.unwrap().template.spec.unwrap();
        let vol = pod.volumes.unwrap()[0]
            .persistent_volume_claim
            .clone()
            .unwrap();
        assert_eq!(vol.claim_name, "stowage-backup-data-pg-0-0123456789");
        let env = pod.containers[0].env.clone().unwrap();
        let pvc = env.iter().find(|e| e.name == "STOWAGE_PVC").unwrap();
        assert_eq!(pvc.value.as_deref(), Some("data-pg-0"));
    }

    #[test]
    fn deadline_scales_with_size() {
        assert_eq!(active_deadline_for(0), 3600);
        assert_eq!(active_deadline_for(10 << 30), 3600 + 1280);
    }

    #[test]
    fn deadline_follows_the_pvc_then_the_policy_then_the_size() {
        // A first backup of 100 GiB over a 20 Mbit/s uplink takes about 12 hours; the
        // computed default gives it under 5.
        let size = 100u64 << 30;
        let needed = (size * 8 / 20_000_000) as i64;
        assert!(deadline(size, None, None).unwrap() < needed);
        assert_eq!(deadline(size, None, None), Ok(3600 + 12_800));
        assert_eq!(deadline(size, Some("14h"), None), Ok(14 * 3600));
        assert!(deadline(size, Some("14h"), None).unwrap() > needed);
        assert_eq!(deadline(size, Some("14h"), Some("2d")), Ok(2 * 86_400));
        assert_eq!(deadline(size, None, Some(" ")), Ok(3600 + 12_800));
        let err = deadline(size, Some("14h"), Some("forever")).unwrap_err();
        assert!(
            err.contains("stowage.io/mover-deadline") && err.contains("forever"),
            "{err}"
        );
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_restore_mover_inherits_only_s3_access_and_logging() {
        use crate::env::{CommonEnv, ResticEnv};
        let (restic, common) = (ResticEnv::default(), CommonEnv::default());
        assert_eq!(
            mover_env(&restic, &common, None),
            pairs(&[("STOWAGE_LOG", "info,rustic_core=warn")])
        );
        let restic = ResticEnv {
            aws_endpoint_url_s3: Some("http://garage:3900".into()),
            // The program's own keys and repository never reach a mover.
            aws_access_key_id: Some("AK".into()),
            restic_repository: Some("s3:https://s3.lan/b".into()),
            ..Default::default()
        };
        let common = CommonEnv {
            allow_http: true,
            s3_path_style: Some(false),
            log: "debug".into(),
            s3_concurrency: 8,
            ..Default::default()
        };
        assert_eq!(
            mover_env(&restic, &common, None),
            pairs(&[
                ("STOWAGE_ALLOW_HTTP", "true"),
                ("STOWAGE_S3_PATH_STYLE", "false"),
                ("AWS_ENDPOINT_URL_S3", "http://garage:3900"),
                ("STOWAGE_LOG", "debug"),
            ])
        );
    }

    #[test]
    fn a_backup_mover_adds_its_own_settings_in_order() {
        use crate::env::{CommonEnv, ResticEnv};
        let (restic, common) = (ResticEnv::default(), CommonEnv::default());
        assert_eq!(
            mover_env(&restic, &common, Some(&BackupEnv::default())),
            mover_env(&restic, &common, None)
        );
        let backup = BackupEnv {
            excludes: Some("*.tmp,cache/".into()),
            upload_kib_per_sec: Some(512),
            adopt_history: true,
            extra_tags: vec!["copy=Clone".into(), "hooks=ok".into()],
        };
        assert_eq!(
            mover_env(&restic, &common, Some(&backup)),
            pairs(&[
                ("STOWAGE_LOG", "info,rustic_core=warn"),
                ("STOWAGE_EXCLUDES", "*.tmp,cache/"),
                ("STOWAGE_LIMIT_UPLOAD", "512"),
                ("STOWAGE_ADOPT_HISTORY", "true"),
                ("STOWAGE_EXTRA_TAGS", "copy=Clone,hooks=ok"),
            ])
        );
    }

    #[test]
    fn every_mover_env_variable_is_one_the_mover_reads() {
        use crate::env::{CommonEnv, MoverConfig, ResticEnv};
        let restic = ResticEnv {
            aws_endpoint_url_s3: Some("http://garage:3900".into()),
            ..Default::default()
        };
        let common = CommonEnv {
            allow_http: true,
            s3_path_style: Some(true),
            ..Default::default()
        };
        let backup = BackupEnv {
            excludes: Some("*.tmp".into()),
            upload_kib_per_sec: Some(64),
            adopt_history: true,
            extra_tags: vec!["copy=Direct".into()],
        };
        let c = MoverConfig::from_vars(&mover_env(&restic, &common, Some(&backup))).unwrap();
        assert!(c.common.allow_http && c.mover.adopt_history);
        assert_eq!(c.common.s3_path_style, Some(true));
        assert_eq!(c.common.limit_upload, Some(64));
        assert_eq!(c.mover.excludes.as_deref(), Some("*.tmp"));
        assert_eq!(c.mover.extra_tags.as_deref(), Some("copy=Direct"));
        assert_eq!(
            c.restic.aws_endpoint_url_s3.as_deref(),
            Some("http://garage:3900")
        );
    }
}
