//! Every label, annotation, Secret key and fixed name that stowage's programs and
//! manifests share. Producers and consumers both use these constants; the kustomize
//! checks compare the manifests against them.

/// Label and annotation prefix of everything stowage records on objects.
pub const PREFIX: &str = "stowage.io/";

// The opt-in label key and the names of the policies ConfigMap and credentials Secret
// are settings: their defaults are in `env::ClusterEnv`.
/// Values of the opt-in label that opt a PVC out (a PVC label overrides its
/// namespace's).
pub const OPT_OUT_VALUES: &[&str] = &["none", "off", "false", "disabled"];

/// Namespace label: mover Jobs in this namespace may run as root with the
/// capabilities to read every file and restore ownership.
pub const LABEL_PRIVILEGED_MOVER: &str = "stowage.io/privileged-mover";

/// `app.kubernetes.io/*` labels on everything stowage creates.
pub mod app {
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    pub const NAME: &str = "app.kubernetes.io/name";
    pub const COMPONENT: &str = "app.kubernetes.io/component";
    pub const PART_OF: &str = "app.kubernetes.io/part-of";
    pub const INSTANCE: &str = "app.kubernetes.io/instance";
    /// The value of `managed-by` and `part-of`.
    pub const STOWAGE: &str = "stowage";
}

/// Labels stowage puts on its own objects, to find its work again.
pub mod label {
    /// UID of the PVC a mover Job works on (names can exceed label limits, UIDs not).
    pub const PVC_UID: &str = "stowage.io/pvc-uid";
    /// `backup` or `restore`.
    pub const OPERATION: &str = "stowage.io/operation";
}

/// Annotations a user may set on a PVC.
pub mod user {
    /// Repository URL for this PVC instead of `<base>/<namespace>/<pvc>`.
    pub const REPOSITORY: &str = "stowage.io/repository";
    /// Name of a Secret in the PVC's namespace with RESTIC_REPOSITORY, RESTIC_PASSWORD
    /// and S3 keys (VolSync style); used as it is.
    pub const SECRET: &str = "stowage.io/secret";
    /// Extra exclude patterns, comma separated (restic `--exclude` syntax).
    pub const EXCLUDES: &str = "stowage.io/excludes";
    /// Mover memory (request and limit), e.g. `1Gi`.
    pub const MOVER_MEMORY: &str = "stowage.io/mover-memory";
    /// Mover CPU request, e.g. `1` or `250m`.
    pub const MOVER_CPU: &str = "stowage.io/mover-cpu";
    /// How long this PVC's mover Jobs may run (`12h`, `2d`), instead of the policy's
    /// `limits.jobDeadline` or the computed default.
    pub const MOVER_DEADLINE: &str = "stowage.io/mover-deadline";
    /// User the mover runs as: `UID` or `UID:GID`.
    pub const MOVER_USER: &str = "stowage.io/mover-user";
    /// Any new value requests a backup at the next scheduler pass.
    pub const BACKUP_NOW: &str = "stowage.io/backup-now";
    /// `"true"`: this PVC may continue a repository that holds another PVC's history
    /// (the first-backup guard lets it through).
    pub const ADOPT_REPOSITORY: &str = "stowage.io/adopt-repository";
    /// `"true"` on a PVC that refers to the stowage kind: bind it empty instead of
    /// restoring.
    pub const FORCE_EMPTY: &str = "stowage.io/force-empty";
    /// Confirms a retention gc held back (it would forget more than
    /// `STOWAGE_FORGET_MAX_PERCENT` of the repository's snapshots at once): the number
    /// of snapshots its `RetentionBlocked` Event names, or more. Used once: gc records
    /// the value, and a later hold needs a new one.
    pub const CONFIRM_FORGET: &str = "stowage.io/confirm-forget";
}

/// Annotations stowage records on a PVC.
pub mod status {
    /// RFC 3339 time of the last backup attempt (started Job).
    pub const LAST_ATTEMPT: &str = "stowage.io/last-attempt";
    /// RFC 3339 time of the last successful backup.
    pub const LAST_BACKUP: &str = "stowage.io/last-backup";
    /// Snapshot id of the last successful backup.
    pub const LAST_SNAPSHOT: &str = "stowage.io/last-snapshot";
    /// `Succeeded` or `Failed: <reason>` of the last finished backup.
    pub const LAST_RESULT: &str = "stowage.io/last-result";
    /// Name of the last backup Job started for this PVC.
    pub const LAST_JOB: &str = "stowage.io/last-job";
    /// Name of the last backup Job whose result is recorded (results are recorded once).
    pub const RECORDED_JOB: &str = "stowage.io/recorded-job";
    /// The `backup-now` value the scheduler last served.
    pub const BACKUP_NOW_SERVED: &str = "stowage.io/backup-now-served";
    /// Snapshot id this PVC was populated from (set by prewarm; lets the first-backup
    /// guard through).
    pub const POPULATED_FROM: &str = "stowage.io/populated-from";
    /// Why the scheduler last skipped this PVC (cleared when it starts a backup).
    pub const SKIPPED: &str = "stowage.io/skipped";
    /// RFC 3339 time the scheduler recorded the last result (any outcome): the order
    /// of results per storage, for the circuit breaker.
    pub const LAST_RESULT_AT: &str = "stowage.io/last-result-at";
    /// Snapshot id stored by the last partial backup (`Failed: Partial`): it exists
    /// but lacks the entries the mover could not read.
    pub const LAST_PARTIAL_SNAPSHOT: &str = "stowage.io/last-partial-snapshot";
    /// RFC 3339 time the scheduler first saw the PVC opted in (the backup-missing
    /// alert's reference while no backup ever succeeded).
    pub const OPTED_IN_AT: &str = "stowage.io/opted-in-at";
}

/// The API group and kind of stowage's CRD (a PVC's `spec.dataSourceRef`).
pub const CRD_GROUP: &str = "stowage.io";
pub const CRD_KIND: &str = "Restore";

/// Keys of the central Secret in the stowage namespace.
pub mod secret_keys {
    /// Master secret from which every repository's password is derived.
    pub const MASTER_PASSWORD: &str = "master-password";
    pub const MOVER_ACCESS_KEY_ID: &str = "mover-access-key-id";
    pub const MOVER_SECRET_ACCESS_KEY: &str = "mover-secret-access-key";
    pub const GC_ACCESS_KEY_ID: &str = "gc-access-key-id";
    pub const GC_SECRET_ACCESS_KEY: &str = "gc-secret-access-key";
}

/// Keys of a per-run Secret or a VolSync-style user Secret (restic's variables).
pub mod run_secret_keys {
    pub const RESTIC_REPOSITORY: &str = "RESTIC_REPOSITORY";
    pub const RESTIC_PASSWORD: &str = "RESTIC_PASSWORD";
    pub const AWS_ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
    pub const AWS_SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
    pub const AWS_DEFAULT_REGION: &str = "AWS_DEFAULT_REGION";
    /// PEM bundle of the CAs the mover trusts for S3 (VolSync's `customCA` key): copied
    /// from the program's own `STOWAGE_CA_BUNDLE`, mounted into the mover.
    pub const CA_CERT: &str = "ca.crt";
}

/// Key of the policies ConfigMap holding the YAML/JSON document.
pub const POLICIES_KEY: &str = "policies.yaml";

/// Where a mover Job mounts the volume.
pub const MOVER_DATA_PATH: &str = "/data";
/// Writable scratch space of a mover (its root filesystem is read-only).
pub const MOVER_TMP_PATH: &str = "/tmp";
/// Kubernetes' default termination message file, read back by the scheduler.
pub const TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";
/// Where a mover Job mounts the [`run_secret_keys::CA_CERT`] of its per-run Secret (and
/// where the custom-ca component mounts the CA into stowage's own CronJobs).
pub const MOVER_CA_DIR: &str = "/etc/stowage/ca";

/// Event reasons (the troubleshooting docs have a section per reason).
pub mod reason {
    pub const BACKUP_STARTED: &str = "BackupStarted";
    pub const BACKUP_SUCCEEDED: &str = "BackupSucceeded";
    pub const BACKUP_FAILED: &str = "BackupFailed";
    pub const UNKNOWN_POLICY: &str = "UnknownPolicy";
    pub const INVALID_SCHEDULE: &str = "InvalidSchedule";
    pub const BLOCK_VOLUME: &str = "BlockVolumeSkipped";
    pub const VOLUME_IN_USE: &str = "VolumeInUse";
    pub const MOVER_USER_UNKNOWN: &str = "MoverUserUnknown";
    pub const FOREIGN_HISTORY: &str = "ForeignHistory";
    pub const CREDENTIALS_MISSING: &str = "CredentialsMissing";
    /// The PVC's `stowage.io/mover-deadline` is not a duration (no Job is started).
    pub const INVALID_MOVER_DEADLINE: &str = "InvalidMoverDeadline";
    /// A backup stored a snapshot but left out entries it could not read.
    pub const BACKUP_PARTIAL: &str = "BackupPartial";
    /// The scheduler could not start a backup Job (API error); retried next pass.
    pub const BACKUP_NOT_STARTED: &str = "BackupNotStarted";
    /// The PVC names another namespace's repository without that namespace's grant.
    pub const REPOSITORY_NOT_GRANTED: &str = "RepositoryNotGranted";
    /// The PVC names a repository the scheduler may not derive a password for
    /// (outside `STOWAGE_REPOSITORY_BASE`, the base itself) without its own Secret.
    pub const REPOSITORY_REFUSED: &str = "RepositoryRefused";
    /// Backups of a storage (endpoint and bucket) keep failing to reach it: the
    /// scheduler starts one probe backup per pass instead of one Job per PVC.
    pub const STORAGE_UNREACHABLE: &str = "StorageUnreachable";
    /// A probe backup reached the storage again: backups resume.
    pub const STORAGE_REACHABLE: &str = "StorageReachable";
    /// gc found a repository damaged (check failed, cannot be opened).
    pub const REPOSITORY_DAMAGED: &str = "RepositoryDamaged";
    /// gc removed a stale lock from a repository.
    pub const STALE_LOCK_REMOVED: &str = "StaleLockRemoved";
    /// gc pruned a repository.
    pub const REPOSITORY_PRUNED: &str = "RepositoryPruned";
    /// gc held back the retention of a repository: it would forget more than the set
    /// share of its snapshots at once (until confirmed with
    /// [`super::user::CONFIRM_FORGET`], or `--confirm-forget` for an orphan).
    pub const RETENTION_BLOCKED: &str = "RetentionBlocked";
    /// gc forgot more than the set share at once, as a confirmation allowed.
    pub const RETENTION_CONFIRMED: &str = "RetentionConfirmed";
}

/// Key of gc's state ConfigMap holding the JSON record of prunes and checks.
pub const GC_STATE_KEY: &str = "state.json";
/// Key of gc's state ConfigMap: RFC 3339 time of the last pass without errors (pushed
/// by every pass, so that the "gc not succeeding" alert sees failing passes too).
pub const GC_LAST_SUCCESS_KEY: &str = "last-success";

/// The zero-touch restore (stowage-prewarm as volume populator) and the backup index.
pub mod prewarm {
    /// Annotations prewarm records on a populated PVC (besides
    /// [`super::status::POPULATED_FROM`], the snapshot id, set only when data was
    /// restored).
    pub mod status {
        /// Repository the PVC was populated from.
        pub const RESTORED_FROM: &str = "stowage.io/restored-from";
        /// RFC 3339 time the snapshot was taken.
        pub const RESTORED_SNAPSHOT_TIME: &str = "stowage.io/restored-snapshot-time";
        /// RFC 3339 time the volume was handed to the PVC.
        pub const RESTORED_AT: &str = "stowage.io/restored-at";
        /// Why the PVC was bound empty: `no-backup` (the storage answered: no repository
        /// or no snapshot) or `forced` (annotation `stowage.io/force-empty`).
        pub const BOUND_EMPTY: &str = "stowage.io/bound-empty";
        /// What prewarm last reported about a PVC it is populating (`Reason: message`);
        /// an Event is published only when it changes.
        pub const POPULATOR_STATUS: &str = "stowage.io/populator-status";
    }

    /// Annotations on a prime PVC (stowage namespace): the decision taken when it was
    /// created, so that later passes and a killed-and-restarted prewarm follow it.
    pub mod prime {
        /// `namespace/name` of the user's PVC.
        pub const FOR_PVC: &str = "stowage.io/populating";
        /// UID of the user's PVC (also the `stowage.io/pvc-uid` label).
        pub const FOR_UID: &str = "stowage.io/populating-uid";
        /// Repository to restore from.
        pub const REPOSITORY: &str = "stowage.io/restore-repository";
        /// Snapshot id to restore; empty: bind empty (fresh install or forced).
        pub const SNAPSHOT: &str = "stowage.io/restore-snapshot";
        /// RFC 3339 time of that snapshot.
        pub const SNAPSHOT_TIME: &str = "stowage.io/restore-snapshot-time";
        /// Why empty: `no-backup` or `forced`.
        pub const EMPTY_REASON: &str = "stowage.io/empty-reason";
        /// Prefix of prime PVC names (`stowage-prime-<user PVC uid>`).
        pub const NAME_PREFIX: &str = "stowage-prime-";
    }

    /// Values of [`status::BOUND_EMPTY`] / [`prime::EMPTY_REASON`].
    pub const EMPTY_NO_BACKUP: &str = "no-backup";
    pub const EMPTY_FORCED: &str = "forced";

    /// Event reasons of the populator (the troubleshooting docs have a section each).
    pub mod reason {
        /// A restore mover Job started.
        pub const RESTORE_STARTED: &str = "RestoreStarted";
        /// The volume was restored from a snapshot and handed to the PVC.
        pub const RESTORED: &str = "Restored";
        /// No backup exists (the storage said so) or force-empty: bound empty.
        pub const BOUND_EMPTY: &str = "BoundEmpty";
        /// A restore Job failed; retried with backoff, never bound empty.
        pub const RESTORE_FAILED: &str = "RestoreFailed";
        /// A restore Job succeeded but its mover's result is not the planned restore
        /// (nothing restored, another snapshot or repository); retried with backoff,
        /// never bound.
        pub const RESTORE_MISMATCH: &str = "RestoreMismatch";
        /// The source of a restore is another namespace's data and that namespace has
        /// not granted the PVC's namespace its use (`grant::GRANT_ANNOTATION`).
        pub const RESTORE_NOT_GRANTED: &str = "RestoreNotGranted";
        /// S3 error, timeout or wrong credentials while looking for the backup; retried.
        pub const SOURCE_UNAVAILABLE: &str = "RestoreSourceUnavailable";
        /// The Restore object is invalid (bad asOf, unknown snapshot).
        pub const INVALID_RESTORE: &str = "InvalidRestore";
        /// The PVC's storage class provisions populated PVCs empty on its own: refused.
        pub const UNSAFE_STORAGE_CLASS: &str = "UnsafeStorageClass";
        /// The PVC's storage class is being probed; the PVC waits for the verdict.
        pub const PROBING_STORAGE_CLASS: &str = "ProbingStorageClass";
        /// WaitForFirstConsumer: waiting for a pod using the PVC to be scheduled.
        pub const WAITING_FOR_CONSUMER: &str = "WaitingForFirstConsumer";
    }

    /// Key of the index ConfigMap holding the JSON index.
    pub const INDEX_KEY: &str = "index.json";
    /// Annotation on the index ConfigMap: RFC 3339 time of the last index run.
    pub const INDEXED_AT: &str = "stowage.io/indexed-at";

    /// Storage class probes: a small PVC per class (stowage namespace) whose
    /// `dataSourceRef` names a Restore object that is never populated. Provisioned →
    /// the class ignores populators (unsafe); still Pending after the wait → safe.
    pub mod probe {
        /// Prefix of probe PVC names (`stowage-probe-<class>`, shortened and hashed
        /// when needed).
        pub const NAME_PREFIX: &str = "stowage-probe-";
        /// `app.kubernetes.io/component` of probe PVCs.
        pub const COMPONENT: &str = "probe";
        /// On a probe PVC: the storage class it judges.
        pub const FOR_CLASS: &str = "stowage.io/probe-class";
        /// On a probe PVC: RFC 3339 time the probe started.
        pub const STARTED_AT: &str = "stowage.io/probe-started-at";
        /// ConfigMap (stowage namespace) holding one verdict per class (key: class
        /// name, value: JSON `{verdict, provisioner, judgedAt, detail}`).
        pub const CONFIGMAP: &str = "stowage-storage-classes";
        /// Verdicts.
        pub const SAFE: &str = "safe";
        pub const UNSAFE: &str = "unsafe";
    }

    /// Provisioners known to provision PVCs with a foreign `dataSourceRef` at once,
    /// empty (they do not implement the populator contract).
    pub const UNSAFE_PROVISIONERS: &[&str] = &[
        "rancher.io/local-path",
        "k8s.io/minikube-hostpath",
        "docker.io/hostpath",
        "microk8s.io/hostpath",
        "kubernetes.io/host-path",
    ];
}

/// Consistent backups of live applications: copy methods (Direct, Snapshot, Clone) and
/// Velero-style pre/post hooks (docs/hooks-and-copy-methods.md).
pub mod consistency {
    /// PVC annotation: `Direct` (default), `Snapshot` or `Clone`.
    pub const COPY_METHOD: &str = "stowage.io/copy-method";
    /// PVC annotation: VolumeSnapshotClass of the `Snapshot` method (default: the
    /// scheduler's `STOWAGE_VOLUME_SNAPSHOT_CLASS`, else the cluster's default class).
    pub const VOLUME_SNAPSHOT_CLASS: &str = "stowage.io/volume-snapshot-class";
    /// PVC annotation: storage class of the temporary volume the mover reads (the
    /// PVC restored from the snapshot, or the clone); default: the PVC's own class.
    pub const COPY_STORAGE_CLASS: &str = "stowage.io/copy-storage-class";

    /// PVC status: the copy method of the last backup started.
    pub const LAST_COPY_METHOD: &str = "stowage.io/last-copy-method";
    /// PVC status: hook outcome of the last backup, e.g. `pre=Succeeded post=Succeeded`.
    pub const LAST_HOOKS: &str = "stowage.io/last-hooks";
    /// PVC status: JSON record of hooks that ran for a backup whose post hooks are
    /// still owed (written before the first pre hook runs, removed once the post hooks
    /// ran): a killed scheduler's next pass runs them.
    pub const HOOK_STATE: &str = "stowage.io/hook-state";

    /// Label on the temporary VolumeSnapshot and PVC of a backup: the mover Job that
    /// reads them (also their name).
    pub const LABEL_JOB: &str = "stowage.io/job";
    /// `app.kubernetes.io/component` of the temporary objects.
    pub const COMPONENT_SNAPSHOT: &str = "backup-snapshot";
    pub const COMPONENT_COPY: &str = "backup-copy";

    /// Snapshot tags (`key=value`) recording how the data was taken.
    pub const TAG_COPY_METHOD: &str = "copy-method";
    pub const TAG_PRE_HOOK: &str = "pre-hook";
    pub const TAG_POST_HOOK: &str = "post-hook";

    /// Velero's hook annotations on the app pod, used unchanged.
    pub mod velero {
        pub const PRE_COMMAND: &str = "pre.hook.backup.velero.io/command";
        pub const PRE_CONTAINER: &str = "pre.hook.backup.velero.io/container";
        pub const PRE_ON_ERROR: &str = "pre.hook.backup.velero.io/on-error";
        pub const PRE_TIMEOUT: &str = "pre.hook.backup.velero.io/timeout";
        pub const POST_COMMAND: &str = "post.hook.backup.velero.io/command";
        pub const POST_CONTAINER: &str = "post.hook.backup.velero.io/container";
        pub const POST_ON_ERROR: &str = "post.hook.backup.velero.io/on-error";
        pub const POST_TIMEOUT: &str = "post.hook.backup.velero.io/timeout";
    }

    /// Event reasons.
    pub mod reason {
        /// A pre hook failed; with `on-error: Fail` the backup is not made.
        pub const PRE_HOOK_FAILED: &str = "PreHookFailed";
        /// A post hook failed (the app may still be frozen: look at it).
        pub const POST_HOOK_FAILED: &str = "PostHookFailed";
        /// Hook annotations that cannot be used (bad JSON, timeout, on-error value).
        pub const INVALID_HOOK: &str = "InvalidHook";
        /// The copy-method annotation names no method.
        pub const INVALID_COPY_METHOD: &str = "InvalidCopyMethod";
        /// The VolumeSnapshot or clone could not be made in time or failed.
        pub const COPY_FAILED: &str = "PointInTimeCopyFailed";
    }

    /// `LAST_RESULT` kinds (`Failed: <kind>`).
    pub const RESULT_PRE_HOOK_FAILED: &str = "PreHookFailed";
    pub const RESULT_POST_HOOK_FAILED: &str = "PostHookFailed";
    pub const RESULT_COPY_FAILED: &str = "PointInTimeCopyFailed";
}
