//! Kubernetes Events for transitions. Events are best effort: a failure to record one is
//! logged and never fails a reconcile.

use kube::{
    runtime::events::{Event, EventType, Recorder},
    Resource,
};
use tracing::warn;

/// A transition worth telling users about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Transition {
    pub type_: EventType,
    pub reason: String,
    pub note: String,
}

impl Transition {
    pub fn normal(reason: impl Into<String>, note: impl Into<String>) -> Self {
        Self {
            type_: EventType::Normal,
            reason: reason.into(),
            note: note.into(),
        }
    }

    pub fn warning(reason: impl Into<String>, note: impl Into<String>) -> Self {
        Self {
            type_: EventType::Warning,
            reason: reason.into(),
            note: note.into(),
        }
    }
}

pub(crate) async fn publish<K>(recorder: &Recorder, object: &K, transitions: Vec<Transition>)
where
    K: Resource<DynamicType = ()>,
{
    let reference = object.object_ref(&());
    for t in transitions {
        let event = Event {
            type_: t.type_,
            action: t.reason.clone(),
            reason: t.reason,
            note: Some(t.note),
            secondary: None,
        };
        if let Err(error) = recorder.publish(&event, &reference).await {
            let name = reference.name.as_deref().unwrap_or_default();
            let object = match reference.namespace.as_deref() {
                Some(ns) => format!("{}/{ns}/{name}", K::kind(&())),
                None => format!("{}/{name}", K::kind(&())),
            };
            warn!(%object, error = %error, reason = %event.reason, "failed to record event");
        }
    }
}
