//! Kubernetes Events on the objects a program works on. Publishing is best effort: an
//! Event that cannot be written is logged, never fatal (the work itself matters more).

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

/// Event names are `<object name>.<nanoseconds in hex>` (kube's Recorder, as
/// client-go), and the API server takes at most 253 characters: an object whose name
/// leaves less room (a PVC name may be 253 long) gets its Events under a shortened name.
const MAX_EVENT_NAME: usize = 253;
const NAME_SUFFIX: usize = 1 + 16;

/// Publishes Events as one stowage program.
#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
    client: kube::Client,
    reporter: Reporter,
}

impl Events {
    /// `controller` is the program (`stowage-scheduler`), `instance` the pod, if known.
    pub fn new(client: kube::Client, controller: &str, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: controller.into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter.clone()),
            client,
            reporter,
        }
    }

    pub async fn normal(&self, on: &ObjectReference, reason: &str, action: &str, note: String) {
        self.publish(on, EventType::Normal, reason, action, note)
            .await
    }

    pub async fn warning(&self, on: &ObjectReference, reason: &str, action: &str, note: String) {
        self.publish(on, EventType::Warning, reason, action, note)
            .await
    }

    async fn publish(
        &self,
        on: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        // The events API limits notes to 1 KiB.
        let mut note = note;
        if note.len() > 1000 {
            let mut cut = 997;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
            note.push_str("...");
        }
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        let long_name = on.name.as_deref().map_or(0, str::len) + NAME_SUFFIX > MAX_EVENT_NAME;
        let published = if long_name {
            self.publish_shortened(&ev, on).await
        } else {
            self.recorder.publish(&ev, on).await
        };
        if let Err(e) = published {
            tracing::warn!(
                reason,
                object = on.name.as_deref().unwrap_or(""),
                namespace = on.namespace.as_deref().unwrap_or(""),
                "{}",
                super::describe_kube_error(&e, "create an Event")
            );
        }
    }

    /// The Event the Recorder would write, under a name cut to fit.
    async fn publish_shortened(&self, ev: &Event, on: &ObjectReference) -> kube::Result<()> {
        use k8s_openapi::api::events::v1::Event as K8sEvent;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
        let now = k8s_openapi::jiff::Timestamp::now();
        let base = on.name.as_deref().unwrap_or_default();
        let mut cut = MAX_EVENT_NAME - NAME_SUFFIX;
        while !base.is_char_boundary(cut) {
            cut -= 1;
        }
        // A name may not end in `-` or `.` before the suffix's dot.
        let stem = base[..cut].trim_end_matches(['-', '.']);
        let namespace = on.namespace.clone().unwrap_or_else(|| "default".into());
        let event = K8sEvent {
            action: Some(ev.action.clone()),
            reason: Some(ev.reason.clone()),
            note: ev.note.clone(),
            event_time: Some(MicroTime(now)),
            regarding: Some(on.clone()),
            reporting_controller: Some(self.reporter.controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| self.reporter.controller.clone()),
            ),
            type_: Some(
                match ev.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            metadata: ObjectMeta {
                name: Some(format!("{stem}.{:x}", now.as_nanosecond())),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        kube::Api::<K8sEvent>::namespaced(self.client.clone(), &namespace)
            .create(&kube::api::PostParams::default(), &event)
            .await
            .map(|_| ())
    }
}
