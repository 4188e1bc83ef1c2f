//! The object store behind the fake API server, with the API server's write semantics:
//! resourceVersion (one global counter), uid, creationTimestamp, generation,
//! optimistic concurrency, finalizers and deletionTimestamp, garbage collection through
//! ownerReferences, namespace termination, a few defaults. The HTTP layer and the
//! cluster simulator both go through it; direct calls are not audited.
//!
//! Simplifications, on purpose: strategic merge patch and server-side apply are JSON
//! merge patches (lists are replaced, not merged by key); Foreground and Background
//! propagation both delete dependents at once; `managedFields` are not kept.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::ApiError;
use super::resources::Gvr;
use super::selector::{FieldSelector, LabelSelector};

/// How many watch events are kept for `watch` requests that resume from a version.
const HISTORY: usize = 20_000;

/// Where a stored object lives: group, plural, namespace (`""` when cluster-scoped), name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Key {
    pub group: String,
    pub plural: String,
    pub namespace: String,
    pub name: String,
}

/// Type of a change, as in watch events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// The object was created.
    Added,
    /// The object was changed.
    Modified,
    /// The object is gone.
    Deleted,
}

impl EventType {
    /// `ADDED`, `MODIFIED`, `DELETED`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change of the store.
#[derive(Clone, Debug)]
pub(crate) struct Change {
    pub rv: u64,
    pub kind: EventType,
    pub key: Key,
    pub object: Value,
}

/// A patch as the API server receives it.
#[derive(Clone, Debug)]
pub enum PatchBody {
    /// JSON merge patch (RFC 7386); strategic merge patches are treated as this.
    Merge(Value),
    /// JSON patch (RFC 6902).
    Json(json_patch::Patch),
    /// Server-side apply, applied as a merge patch; creates the object when missing.
    Apply(Value),
}

/// Dependents' fate when their owner is deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    /// Remove the owner reference from dependents, keep them.
    Orphan,
    /// Delete dependents (at once, here).
    Background,
    /// Delete dependents (at once, here, like Background).
    Foreground,
}

/// Options of a delete: propagation and preconditions.
#[derive(Clone, Debug, Default)]
pub struct DeleteOpts {
    /// `None`: the resource's default (Orphan for batch/v1 Jobs, as the real API
    /// server does, Background otherwise).
    pub propagation: Option<Propagation>,
    /// Precondition on the object's uid.
    pub uid: Option<String>,
    /// Precondition on the object's resourceVersion.
    pub resource_version: Option<String>,
}

impl DeleteOpts {
    /// Delete dependents too.
    pub fn background() -> Self {
        DeleteOpts {
            propagation: Some(Propagation::Background),
            ..Default::default()
        }
    }
}

/// Which part of an object a write may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// In-process writes (simulator, tests): the whole object, status included.
    Direct,
    /// The main resource over HTTP: status is kept for types with a status subresource.
    Main,
    /// The `/status` subresource: only status.
    Status,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<Key, Value>,
    rv: u64,
    history: VecDeque<Change>,
    held_namespaces: BTreeSet<String>,
}

/// The object store. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Store {
    state: Mutex<State>,
    tx: watch::Sender<u64>,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            state: Mutex::new(State::default()),
            tx: watch::channel(0).0,
        }
    }
}

fn random_u64() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    std::hash::RandomState::new().hash_one(N.fetch_add(1, Ordering::Relaxed))
}

/// A random version-4-looking UUID.
pub fn new_uid() -> String {
    let (a, b) = (random_u64(), random_u64());
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        b >> 52,
        b & 0xffff_ffff_ffff
    )
}

/// `n` random characters as in generated names (lowercase consonants and digits).
pub fn random_suffix(n: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut x = random_u64();
    (0..n)
        .map(|_| {
            let c = ALPHABET[(x % ALPHABET.len() as u64) as usize] as char;
            x /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

/// Now, RFC 3339 with second precision, as in `creationTimestamp`.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_else(|_| jiff::Timestamp::now())
        .to_string()
}

/// Standard base64 with padding, as Secret `data` is on the wire.
pub fn base64(data: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn meta(obj: &Value) -> &Value {
    &obj["metadata"]
}

fn meta_mut(obj: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    obj["metadata"]
        .as_object_mut()
        .expect("metadata is an object")
}

fn str_of<'a>(obj: &'a Value, field: &str) -> &'a str {
    meta(obj)[field].as_str().unwrap_or("")
}

fn has_finalizers(obj: &Value) -> bool {
    meta(obj)["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty())
}

/// `generateName` prefixes are cut to this length (63 minus the 5 random characters).
const MAX_GENERATED_PREFIX: usize = 58;

/// The API server's length limits on names and labels, in its words: what a program
/// must live with when users' names are as long as Kubernetes allows. Namespaces are
/// DNS labels (63), Job names at most 63 (the Job controller puts them in its pods'
/// labels), other names DNS subdomains (253); label values at most 63, label keys 63
/// after an optional prefix of at most 253.
fn meta_problem(gvr: &Gvr, name: &str, obj: &Value) -> Option<String> {
    let max = match (gvr.group.as_str(), gvr.plural.as_str()) {
        ("", "namespaces") | ("batch", "jobs") => 63,
        _ => 253,
    };
    if name.len() > max {
        return Some(format!(
            "metadata.name: Invalid value: \"{name}\": must be no more than {max} characters"
        ));
    }
    for (k, v) in meta(obj)["labels"].as_object().into_iter().flatten() {
        let v = v.as_str().unwrap_or("");
        let (prefix, key_name) = k.rsplit_once('/').unwrap_or(("", k));
        if key_name.is_empty() || key_name.len() > 63 || prefix.len() > 253 {
            return Some(format!(
                "metadata.labels: Invalid value: \"{k}\": a label key is at most 63 characters, \
                 after an optional prefix of at most 253"
            ));
        }
        if v.len() > 63 {
            return Some(format!(
                "metadata.labels: Invalid value: \"{v}\": must be no more than 63 characters"
            ));
        }
    }
    None
}

fn is_namespace(key: &Key) -> bool {
    key.group.is_empty() && key.plural == "namespaces"
}

/// Whether objects of `gvr` addressed with namespace `ns` are namespaced: from the
/// table for known types, from the request's shape for unknown ones.
fn namespaced(gvr: &Gvr, ns: &str) -> bool {
    let info = gvr.info();
    if info.known {
        info.namespaced
    } else {
        !ns.is_empty()
    }
}

fn key(gvr: &Gvr, ns: &str, name: &str) -> Key {
    Key {
        group: gvr.group.clone(),
        plural: gvr.plural.clone(),
        namespace: if namespaced(gvr, ns) {
            ns.to_string()
        } else {
            String::new()
        },
        name: name.to_string(),
    }
}

/// The object without metadata and status: what `generation` tracks.
fn spec_part(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    o
}

/// Defaults the API server fills in on creation (a small, useful subset).
fn apply_defaults(gvr: &Gvr, obj: &mut Value) {
    let set = |v: &mut Value, path: &[&str], default: Value| {
        let mut cur = v;
        for p in &path[..path.len() - 1] {
            if !cur[*p].is_object() {
                cur[*p] = json!({});
            }
            cur = &mut cur[*p];
        }
        let last = path[path.len() - 1];
        if cur.get(last).is_none_or(Value::is_null) {
            cur[last] = default;
        }
    };
    match (gvr.group.as_str(), gvr.plural.as_str()) {
        ("", "namespaces") => set(obj, &["status", "phase"], json!("Active")),
        ("", "pods") => {
            set(obj, &["status", "phase"], json!("Pending"));
            set(obj, &["spec", "restartPolicy"], json!("Always"));
            if let Some(cs) = obj["spec"]["containers"].as_array_mut() {
                for c in cs {
                    set(
                        c,
                        &["terminationMessagePath"],
                        json!("/dev/termination-log"),
                    );
                    set(c, &["terminationMessagePolicy"], json!("File"));
                }
            }
        }
        ("", "persistentvolumeclaims") => {
            set(obj, &["status", "phase"], json!("Pending"));
            set(obj, &["spec", "volumeMode"], json!("Filesystem"));
        }
        ("", "persistentvolumes") => {
            set(obj, &["status", "phase"], json!("Pending"));
            set(obj, &["spec", "volumeMode"], json!("Filesystem"));
            set(
                obj,
                &["spec", "persistentVolumeReclaimPolicy"],
                json!("Retain"),
            );
        }
        ("", "secrets") => {
            set(obj, &["type"], json!("Opaque"));
        }
        ("storage.k8s.io", "storageclasses") => {
            set(obj, &["reclaimPolicy"], json!("Delete"));
            set(obj, &["volumeBindingMode"], json!("Immediate"));
        }
        ("batch", "jobs") => {
            set(obj, &["spec", "backoffLimit"], json!(6));
            set(obj, &["spec", "completions"], json!(1));
            set(obj, &["spec", "parallelism"], json!(1));
            set(obj, &["spec", "suspend"], json!(false));
            set(obj, &["spec", "completionMode"], json!("NonIndexed"));
            // The API server labels the template and selects on the Job's uid.
            let uid = str_of(obj, "uid").to_string();
            let name = str_of(obj, "name").to_string();
            let manual = obj["spec"]["manualSelector"].as_bool().unwrap_or(false);
            if !manual && !uid.is_empty() {
                let labels = json!({
                    "batch.kubernetes.io/controller-uid": uid,
                    "controller-uid": uid,
                    "batch.kubernetes.io/job-name": name,
                    "job-name": name,
                });
                set(obj, &["spec", "template", "metadata", "labels"], json!({}));
                if let (Some(tl), Some(l)) = (
                    obj["spec"]["template"]["metadata"]["labels"].as_object_mut(),
                    labels.as_object(),
                ) {
                    for (k, v) in l {
                        tl.insert(k.clone(), v.clone());
                    }
                }
                set(
                    obj,
                    &["spec", "selector"],
                    json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
                );
            }
        }
        _ => {}
    }
}

/// Secrets' `stringData` is write-only: merged into `data`, base64-encoded.
fn fold_string_data(gvr: &Gvr, obj: &mut Value) {
    if !(gvr.group.is_empty() && gvr.plural == "secrets") {
        return;
    }
    let Some(sd) = obj.as_object_mut().and_then(|o| o.remove("stringData")) else {
        return;
    };
    if !obj["data"].is_object() {
        obj["data"] = json!({});
    }
    if let Some(map) = sd.as_object() {
        for (k, v) in map {
            obj["data"][k] = json!(base64(v.as_str().unwrap_or("").as_bytes()));
        }
    }
}

impl State {
    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn record(&mut self, kind: EventType, key: &Key, object: &Value) {
        self.history.push_back(Change {
            rv: self.rv,
            kind,
            key: key.clone(),
            object: object.clone(),
        });
        while self.history.len() > HISTORY {
            self.history.pop_front();
        }
    }

    fn namespace_state(&self, ns: &str) -> Option<bool> {
        let k = Key {
            group: String::new(),
            plural: "namespaces".into(),
            namespace: String::new(),
            name: ns.into(),
        };
        self.objects
            .get(&k)
            .map(|o| !meta(o)["deletionTimestamp"].is_null())
    }

    fn create(
        &mut self,
        gvr: &Gvr,
        ns: &str,
        mut obj: Value,
        mode: Mode,
    ) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the body is not a JSON object".into(),
            ));
        }
        let info = gvr.info();
        let is_ns = namespaced(gvr, ns);
        let body_ns = str_of(&obj, "namespace").to_string();
        if is_ns && !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
                    .into(),
            ));
        }
        if is_ns && ns.is_empty() {
            return Err(ApiError::bad_request(format!(
                "{} must be created in a namespace",
                gvr.plural
            )));
        }
        let mut name = str_of(&obj, "name").to_string();
        if name.is_empty() {
            let prefix = str_of(&obj, "generateName");
            if prefix.is_empty() {
                return Err(ApiError::invalid(
                    gvr,
                    &info.kind,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                ));
            }
            // As the API server: the prefix is cut so that the name stays a DNS label.
            let cut: String = prefix.chars().take(MAX_GENERATED_PREFIX).collect();
            name = format!("{cut}{}", random_suffix(5));
        }
        if let Some(cause) = meta_problem(gvr, &name, &obj) {
            return Err(ApiError::invalid(gvr, &info.kind, &name, &cause));
        }
        if is_ns {
            match self.namespace_state(ns) {
                None => return Err(ApiError::not_found(&Gvr::core("namespaces"), ns)),
                Some(true) => {
                    return Err(ApiError::forbidden(format!(
                        "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                        gvr.qualified()
                    )));
                }
                Some(false) => {}
            }
        }
        let k = key(gvr, ns, &name);
        if self.objects.contains_key(&k) {
            return Err(ApiError::already_exists(gvr, &info.kind, &name));
        }
        if obj["apiVersion"].as_str().is_none_or(str::is_empty) {
            obj["apiVersion"] = json!(gvr.api_version());
        }
        if obj["kind"].as_str().is_none_or(str::is_empty) {
            obj["kind"] = json!(info.kind);
        }
        if mode != Mode::Direct && info.status_subresource {
            obj.as_object_mut().expect("object").remove("status");
        }
        let rv = self.bump();
        {
            let m = meta_mut(&mut obj);
            m.insert("name".into(), json!(name));
            if is_ns {
                m.insert("namespace".into(), json!(ns));
            } else {
                m.remove("namespace");
            }
            m.insert("uid".into(), json!(new_uid()));
            m.insert("resourceVersion".into(), json!(rv.to_string()));
            m.insert("creationTimestamp".into(), json!(now_rfc3339()));
            m.insert("generation".into(), json!(1));
            m.remove("deletionTimestamp");
            m.remove("managedFields");
        }
        apply_defaults(gvr, &mut obj);
        fold_string_data(gvr, &mut obj);
        self.record(EventType::Added, &k, &obj);
        self.objects.insert(k, obj.clone());
        Ok(obj)
    }

    /// Replaces an object; `check_rv` enforces the body's resourceVersion.
    fn update(
        &mut self,
        gvr: &Gvr,
        ns: &str,
        name: &str,
        mut obj: Value,
        mode: Mode,
    ) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the body is not a JSON object".into(),
            ));
        }
        let info = gvr.info();
        let k = key(gvr, ns, name);
        let Some(old) = self.objects.get(&k).cloned() else {
            return Err(ApiError::not_found(gvr, name));
        };
        let body_name = str_of(&obj, "name");
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let body_rv = str_of(&obj, "resourceVersion");
        if !body_rv.is_empty() && body_rv != str_of(&old, "resourceVersion") {
            return Err(ApiError::conflict(gvr, name));
        }
        let mut new = match mode {
            Mode::Direct => obj,
            Mode::Main => {
                if info.status_subresource {
                    let m = obj.as_object_mut().expect("object");
                    m.remove("status");
                    if let Some(s) = old.get("status") {
                        m.insert("status".into(), s.clone());
                    }
                }
                obj
            }
            Mode::Status => {
                let mut n = old.clone();
                if let Some(s) = obj.get("status") {
                    n["status"] = s.clone();
                }
                n
            }
        };
        // Identity and server-owned fields cannot be changed by writes.
        {
            let om = meta(&old).clone();
            let m = meta_mut(&mut new);
            for f in [
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "generation",
                "resourceVersion",
            ] {
                match om.get(f) {
                    Some(v) => m.insert(f.into(), v.clone()),
                    None => m.remove(f),
                };
            }
            m.remove("managedFields");
        }
        for f in ["apiVersion", "kind"] {
            if new[f].as_str().is_none_or(str::is_empty) {
                new[f] = old[f].clone();
            }
        }
        fold_string_data(gvr, &mut new);
        if let Some(cause) = meta_problem(gvr, name, &new) {
            return Err(ApiError::invalid(gvr, &info.kind, name, &cause));
        }
        if new == old {
            // A no-op write does not move the resourceVersion, as in Kubernetes.
            return Ok(old);
        }
        if spec_part(&new) != spec_part(&old) {
            let g = meta(&old)["generation"].as_i64().unwrap_or(1) + 1;
            meta_mut(&mut new).insert("generation".into(), json!(g));
        }
        let rv = self.bump();
        meta_mut(&mut new).insert("resourceVersion".into(), json!(rv.to_string()));
        if !meta(&new)["deletionTimestamp"].is_null() && !has_finalizers(&new) && !is_namespace(&k)
        {
            // The last finalizer is gone: the pending deletion completes.
            self.objects.remove(&k);
            self.record(EventType::Deleted, &k, &new);
        } else {
            self.record(EventType::Modified, &k, &new);
            self.objects.insert(k, new.clone());
        }
        Ok(new)
    }

    fn patch(
        &mut self,
        gvr: &Gvr,
        ns: &str,
        name: &str,
        patch: &PatchBody,
        mode: Mode,
    ) -> Result<Value, ApiError> {
        let k = key(gvr, ns, name);
        let Some(old) = self.objects.get(&k).cloned() else {
            if let PatchBody::Apply(body) = patch {
                let mut body = body.clone();
                meta_mut(&mut body).insert("name".into(), json!(name));
                return self.create(gvr, ns, body, mode);
            }
            return Err(ApiError::not_found(gvr, name));
        };
        let mut doc = old.clone();
        match patch {
            PatchBody::Merge(p) | PatchBody::Apply(p) => {
                if let Some(rv) = p["metadata"]["resourceVersion"].as_str()
                    && rv != str_of(&old, "resourceVersion")
                {
                    return Err(ApiError::conflict(gvr, name));
                }
                json_patch::merge(&mut doc, p);
            }
            PatchBody::Json(p) => {
                json_patch::patch(&mut doc, p).map_err(|e| {
                    ApiError::invalid(
                        gvr,
                        &gvr.info().kind,
                        name,
                        &format!("the JSON patch failed: {e}"),
                    )
                })?;
            }
        }
        // The patched resourceVersion is not a precondition past this point.
        meta_mut(&mut doc).insert(
            "resourceVersion".into(),
            meta(&old)["resourceVersion"].clone(),
        );
        self.update(gvr, ns, name, doc, mode)
    }

    fn delete(
        &mut self,
        gvr: &Gvr,
        ns: &str,
        name: &str,
        opts: &DeleteOpts,
    ) -> Result<Value, ApiError> {
        let k = key(gvr, ns, name);
        let Some(obj) = self.objects.get(&k).cloned() else {
            return Err(ApiError::not_found(gvr, name));
        };
        let uid = str_of(&obj, "uid").to_string();
        if let Some(p) = &opts.uid
            && *p != uid
        {
            return Err(ApiError::conflict_msg(
                gvr,
                name,
                format!("Precondition failed: UID in precondition: {p}, UID in object meta: {uid}"),
            ));
        }
        let rv = str_of(&obj, "resourceVersion").to_string();
        if let Some(p) = &opts.resource_version
            && *p != rv
        {
            return Err(ApiError::conflict_msg(
                gvr,
                name,
                format!(
                    "Precondition failed: ResourceVersion in precondition: {p}, ResourceVersion in meta: {rv}"
                ),
            ));
        }
        let default = if gvr.group == "batch" && gvr.plural == "jobs" {
            Propagation::Orphan
        } else {
            Propagation::Background
        };
        if opts.propagation.unwrap_or(default) == Propagation::Orphan {
            self.orphan_dependents(&uid);
        }
        if is_namespace(&k) {
            if meta(&obj)["deletionTimestamp"].is_null() {
                let mut o = obj.clone();
                meta_mut(&mut o).insert("deletionTimestamp".into(), json!(now_rfc3339()));
                o["status"]["phase"] = json!("Terminating");
                let rv = self.bump();
                meta_mut(&mut o).insert("resourceVersion".into(), json!(rv.to_string()));
                self.record(EventType::Modified, &k, &o);
                self.objects.insert(k, o.clone());
                return Ok(o);
            }
            return Ok(obj);
        }
        self.remove_or_mark(&k);
        Ok(self.objects.get(&k).cloned().unwrap_or(obj))
    }

    fn orphan_dependents(&mut self, uid: &str) {
        let dependents: Vec<Key> = self
            .objects
            .iter()
            .filter(|(_, o)| {
                meta(o)["ownerReferences"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|r| r["uid"] == uid))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in dependents {
            let mut o = self.objects[&k].clone();
            if let Some(refs) = meta_mut(&mut o)
                .get_mut("ownerReferences")
                .and_then(Value::as_array_mut)
            {
                refs.retain(|r| r["uid"] != uid);
            }
            let rv = self.bump();
            meta_mut(&mut o).insert("resourceVersion".into(), json!(rv.to_string()));
            self.record(EventType::Modified, &k, &o);
            self.objects.insert(k, o);
        }
    }

    /// Deletes an object, or marks it with a deletionTimestamp when finalizers hold
    /// it. Returns whether anything changed.
    fn remove_or_mark(&mut self, k: &Key) -> bool {
        let Some(obj) = self.objects.get(k) else {
            return false;
        };
        if has_finalizers(obj) {
            if !meta(obj)["deletionTimestamp"].is_null() {
                return false;
            }
            let mut o = obj.clone();
            let rv = self.bump();
            let m = meta_mut(&mut o);
            m.insert("deletionTimestamp".into(), json!(now_rfc3339()));
            m.insert("resourceVersion".into(), json!(rv.to_string()));
            self.record(EventType::Modified, k, &o);
            self.objects.insert(k.clone(), o);
        } else {
            let mut o = self.objects.remove(k).expect("present");
            let rv = self.bump();
            meta_mut(&mut o).insert("resourceVersion".into(), json!(rv.to_string()));
            self.record(EventType::Deleted, k, &o);
        }
        true
    }

    /// Runs garbage collection and namespace termination to a fixed point.
    fn settle(&mut self) {
        loop {
            let mut changed = false;
            let uids: HashSet<String> = self
                .objects
                .values()
                .map(|o| str_of(o, "uid").to_string())
                .collect();
            let orphans: Vec<Key> = self
                .objects
                .iter()
                .filter(|(_, o)| {
                    meta(o)["ownerReferences"].as_array().is_some_and(|refs| {
                        !refs.is_empty()
                            && refs
                                .iter()
                                .all(|r| !uids.contains(r["uid"].as_str().unwrap_or("")))
                    })
                })
                .map(|(k, _)| k.clone())
                .collect();
            for k in orphans {
                changed |= self.remove_or_mark(&k);
            }
            let terminating: Vec<(Key, Value)> = self
                .objects
                .iter()
                .filter(|(k, o)| {
                    is_namespace(k)
                        && !meta(o)["deletionTimestamp"].is_null()
                        && !self.held_namespaces.contains(&k.name)
                })
                .map(|(k, o)| (k.clone(), o.clone()))
                .collect();
            for (nk, nso) in terminating {
                let content: Vec<Key> = self
                    .objects
                    .keys()
                    .filter(|k| k.namespace == nk.name)
                    .cloned()
                    .collect();
                for k in &content {
                    changed |= self.remove_or_mark(k);
                }
                let empty = !self.objects.keys().any(|k| k.namespace == nk.name);
                if empty && !has_finalizers(&nso) {
                    let mut o = self.objects.remove(&nk).expect("present");
                    let rv = self.bump();
                    meta_mut(&mut o).insert("resourceVersion".into(), json!(rv.to_string()));
                    self.record(EventType::Deleted, &nk, &o);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
    }
}

/// Normalises a typed object's JSON so that k8s-openapi accepts it (its deserializer
/// checks `apiVersion` and `kind`).
fn typed<K: k8s_openapi::Resource + DeserializeOwned>(mut v: Value) -> Result<K, ApiError> {
    v["apiVersion"] = json!(K::API_VERSION);
    v["kind"] = json!(K::KIND);
    serde_json::from_value(v)
        .map_err(|e| ApiError::internal(format!("decoding a {}: {e}", K::KIND)))
}

fn untyped<K: Serialize>(obj: &K) -> Result<Value, ApiError> {
    serde_json::to_value(obj).map_err(|e| ApiError::bad_request(format!("encoding: {e}")))
}

impl Store {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let before = st.rv;
        let out = f(&mut st);
        if st.rv != before {
            st.settle();
            let rv = st.rv;
            drop(st);
            self.tx.send_replace(rv);
        }
        out
    }

    pub(crate) fn create_mode(
        &self,
        gvr: &Gvr,
        ns: &str,
        obj: Value,
        mode: Mode,
    ) -> Result<Value, ApiError> {
        self.with(|st| st.create(gvr, ns, obj, mode))
    }

    pub(crate) fn update_mode(
        &self,
        gvr: &Gvr,
        ns: &str,
        name: &str,
        obj: Value,
        mode: Mode,
    ) -> Result<Value, ApiError> {
        self.with(|st| st.update(gvr, ns, name, obj, mode))
    }

    pub(crate) fn patch_mode(
        &self,
        gvr: &Gvr,
        ns: &str,
        name: &str,
        patch: &PatchBody,
        mode: Mode,
    ) -> Result<Value, ApiError> {
        self.with(|st| st.patch(gvr, ns, name, patch, mode))
    }

    /// The changes after resourceVersion `since` of one resource type, and whether the
    /// history still reaches back that far.
    pub(crate) fn changes_since(&self, gvr: &Gvr, since: u64) -> (Vec<Change>, bool, u64) {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let complete = st.history.front().is_none_or(|c| c.rv <= since + 1) || since >= st.rv;
        let out = st
            .history
            .iter()
            .filter(|c| c.rv > since && c.key.group == gvr.group && c.key.plural == gvr.plural)
            .cloned()
            .collect();
        (out, complete, st.rv)
    }

    /// The current (global) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).rv
    }

    /// A receiver that sees the resourceVersion after every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }

    /// One object as JSON.
    pub fn get_json(&self, gvr: &Gvr, ns: &str, name: &str) -> Option<Value> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.objects.get(&key(gvr, ns, name)).cloned()
    }

    /// Objects of a type, in one namespace or all (`None`), optionally filtered by a
    /// label selector (panics on an invalid one: a test bug); sorted by namespace and
    /// name.
    pub fn list_json(
        &self,
        gvr: &Gvr,
        ns: Option<&str>,
        label_selector: Option<&str>,
    ) -> Vec<Value> {
        let sel = label_selector.map(|s| LabelSelector::parse(s).expect("valid label selector"));
        self.list_filtered(gvr, ns, sel.as_ref(), None)
    }

    pub(crate) fn list_filtered(
        &self,
        gvr: &Gvr,
        ns: Option<&str>,
        labels: Option<&LabelSelector>,
        fields: Option<&FieldSelector>,
    ) -> Vec<Value> {
        self.list_at(gvr, ns, labels, fields).0
    }

    /// A consistent list and the resourceVersion it was taken at.
    pub(crate) fn list_at(
        &self,
        gvr: &Gvr,
        ns: Option<&str>,
        labels: Option<&LabelSelector>,
        fields: Option<&FieldSelector>,
    ) -> (Vec<Value>, u64) {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let items = st
            .objects
            .iter()
            .filter(|(k, o)| {
                k.group == gvr.group
                    && k.plural == gvr.plural
                    && ns.is_none_or(|n| n.is_empty() || k.namespace == n)
                    && labels.is_none_or(|s| s.matches(o))
                    && fields.is_none_or(|s| s.matches(o))
            })
            .map(|(_, o)| o.clone())
            .collect();
        (items, st.rv)
    }

    /// Creates an object (full write, status included).
    pub fn create_json(&self, gvr: &Gvr, ns: &str, obj: Value) -> Result<Value, ApiError> {
        self.create_mode(gvr, ns, obj, Mode::Direct)
    }

    /// Replaces an object (full write; the body's resourceVersion, when set, must match).
    pub fn update_json(&self, gvr: &Gvr, ns: &str, obj: Value) -> Result<Value, ApiError> {
        let name = str_of(&obj, "name").to_string();
        self.update_mode(gvr, ns, &name, obj, Mode::Direct)
    }

    /// Patches an object (full write).
    pub fn patch_json(
        &self,
        gvr: &Gvr,
        ns: &str,
        name: &str,
        patch: &PatchBody,
    ) -> Result<Value, ApiError> {
        self.patch_mode(gvr, ns, name, patch, Mode::Direct)
    }

    /// Deletes an object; returns it as it was deleted or marked for deletion.
    pub fn delete_json(
        &self,
        gvr: &Gvr,
        ns: &str,
        name: &str,
        opts: &DeleteOpts,
    ) -> Result<Value, ApiError> {
        self.with(|st| st.delete(gvr, ns, name, opts))
    }

    /// Reads, changes and writes an object under the store's lock (no conflicts).
    pub fn modify_json(
        &self,
        gvr: &Gvr,
        ns: &str,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) -> Result<Value, ApiError> {
        self.with(|st| {
            let mut o = st
                .objects
                .get(&key(gvr, ns, name))
                .cloned()
                .ok_or_else(|| ApiError::not_found(gvr, name))?;
            f(&mut o);
            st.update(gvr, ns, name, o, Mode::Direct)
        })
    }

    /// One typed object (`ns` is ignored for cluster-scoped types).
    pub fn get<K: k8s_openapi::Resource + DeserializeOwned>(
        &self,
        ns: &str,
        name: &str,
    ) -> Option<K> {
        self.get_json(&Gvr::of::<K>(), ns, name)
            .and_then(|v| typed(v).ok())
    }

    /// Typed objects in one namespace or all (`None`).
    pub fn list<K: k8s_openapi::Resource + DeserializeOwned>(&self, ns: Option<&str>) -> Vec<K> {
        self.list_json(&Gvr::of::<K>(), ns, None)
            .into_iter()
            .filter_map(|v| typed(v).ok())
            .collect()
    }

    /// Typed objects matching a label selector.
    pub fn list_labeled<K: k8s_openapi::Resource + DeserializeOwned>(
        &self,
        ns: Option<&str>,
        label_selector: &str,
    ) -> Vec<K> {
        self.list_json(&Gvr::of::<K>(), ns, Some(label_selector))
            .into_iter()
            .filter_map(|v| typed(v).ok())
            .collect()
    }

    /// Creates a typed object in the namespace of its metadata.
    pub fn create<K>(&self, obj: &K) -> Result<K, ApiError>
    where
        K: k8s_openapi::Resource + Serialize + DeserializeOwned,
    {
        let v = untyped(obj)?;
        let ns = str_of(&v, "namespace").to_string();
        typed(self.create_json(&Gvr::of::<K>(), &ns, v)?)
    }

    /// Replaces a typed object (its resourceVersion, when set, must match).
    pub fn update<K>(&self, obj: &K) -> Result<K, ApiError>
    where
        K: k8s_openapi::Resource + Serialize + DeserializeOwned,
    {
        let v = untyped(obj)?;
        let ns = str_of(&v, "namespace").to_string();
        typed(self.update_json(&Gvr::of::<K>(), &ns, v)?)
    }

    /// Merge-patches a typed object.
    pub fn patch<K>(&self, ns: &str, name: &str, merge: &Value) -> Result<K, ApiError>
    where
        K: k8s_openapi::Resource + DeserializeOwned,
    {
        typed(self.patch_json(&Gvr::of::<K>(), ns, name, &PatchBody::Merge(merge.clone()))?)
    }

    /// Reads, changes and writes a typed object atomically.
    pub fn modify<K>(&self, ns: &str, name: &str, f: impl FnOnce(&mut K)) -> Result<K, ApiError>
    where
        K: k8s_openapi::Resource + Serialize + DeserializeOwned,
    {
        let mut err = None;
        let out = self.modify_json(&Gvr::of::<K>(), ns, name, |v| match typed::<K>(v.clone()) {
            Ok(mut k) => {
                f(&mut k);
                match untyped(&k) {
                    Ok(n) => *v = n,
                    Err(e) => err = Some(e),
                }
            }
            Err(e) => err = Some(e),
        })?;
        match err {
            Some(e) => Err(e),
            None => typed(out),
        }
    }

    /// Deletes a typed object with Background propagation.
    pub fn delete<K: k8s_openapi::Resource>(&self, ns: &str, name: &str) -> Result<(), ApiError> {
        self.delete_json(&Gvr::of::<K>(), ns, name, &DeleteOpts::background())
            .map(|_| ())
    }

    /// Keeps a deleted namespace in its Terminating state (content and all) until
    /// [`Store::release_namespace_deletion`].
    pub fn hold_namespace_deletion(&self, ns: &str) {
        self.with(|st| {
            st.held_namespaces.insert(ns.to_string());
        });
    }

    /// Lets a held namespace deletion complete.
    pub fn release_namespace_deletion(&self, ns: &str) {
        self.with(|st| {
            st.held_namespaces.remove(ns);
            // Count as a change so that settle() runs.
            st.bump();
        });
    }

    /// Removes every object (a rebuilt cluster); resourceVersions keep increasing.
    pub fn wipe(&self) {
        self.with(|st| {
            let keys: Vec<Key> = st.objects.keys().cloned().collect();
            for k in keys {
                let mut o = st.objects.remove(&k).expect("present");
                let rv = st.bump();
                meta_mut(&mut o).insert("resourceVersion".into(), json!(rv.to_string()));
                st.record(EventType::Deleted, &k, &o);
            }
            st.held_namespaces.clear();
            st.bump();
        });
    }

    /// Every object, keyed `group/plural/namespace/name`, for debugging output.
    pub fn snapshot_json(&self) -> Value {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let map: serde_json::Map<String, Value> = st
            .objects
            .iter()
            .map(|(k, o)| {
                (
                    format!("{}/{}/{}/{}", k.group, k.plural, k.namespace, k.name),
                    o.clone(),
                )
            })
            .collect();
        Value::Object(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_encodes() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn names_and_labels_at_the_api_servers_limits() {
        let store = Store::default();
        let ns = |n: &str| json!({"metadata": {"name": n}});
        let long_ns = "n".repeat(63);
        store
            .create_json(&Gvr::core("namespaces"), "", ns(&long_ns))
            .unwrap();
        let e = store
            .create_json(&Gvr::core("namespaces"), "", ns(&"n".repeat(64)))
            .unwrap_err();
        assert!(e.message.contains("no more than 63"), "{e:?}");
        let pvcs = Gvr::core("persistentvolumeclaims");
        let pvc = |n: &str| json!({"metadata": {"name": n}});
        store
            .create_json(&pvcs, &long_ns, pvc(&"p".repeat(253)))
            .unwrap();
        let e = store
            .create_json(&pvcs, &long_ns, pvc(&"p".repeat(254)))
            .unwrap_err();
        assert_eq!(e.code, 422, "{e:?}");
        let jobs = Gvr::new("batch", "v1", "jobs");
        assert!(
            store
                .create_json(&jobs, &long_ns, pvc(&"j".repeat(64)))
                .is_err()
        );
        let e = store
            .create_json(
                &Gvr::core("configmaps"),
                &long_ns,
                json!({"metadata": {"name": "c", "labels": {"x": "v".repeat(64)}}}),
            )
            .unwrap_err();
        assert!(e.message.contains("metadata.labels"), "{e:?}");
        // generateName: the prefix is cut, as the API server does.
        let made = store
            .create_json(
                &Gvr::core("configmaps"),
                &long_ns,
                json!({"metadata": {"generateName": "g".repeat(100)}}),
            )
            .unwrap();
        assert_eq!(made["metadata"]["name"].as_str().unwrap().len(), 63);
    }

    #[test]
    fn uid_shape() {
        let u = new_uid();
        assert_eq!(u.len(), 36, "{u}");
        assert_ne!(u, new_uid());
    }
}
