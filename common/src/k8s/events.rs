//! Kubernetes Events on the objects a program works on. Publishing is best effort: an
//! Event that cannot be written is logged, never fatal (the work itself matters more).

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

/// Publishes Events as one stowage program.
#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
}

impl Events {
    /// `controller` is the program (`stowage-scheduler`), `instance` the pod, if known.
    pub fn new(client: kube::Client, controller: &str, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: controller.into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client, reporter),
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
        if let Err(e) = self.recorder.publish(&ev, on).await {
            tracing::warn!(
                reason,
                object = on.name.as_deref().unwrap_or(""),
                namespace = on.namespace.as_deref().unwrap_or(""),
                "{}",
                super::describe_kube_error(&e, "create an Event")
            );
        }
    }
}
