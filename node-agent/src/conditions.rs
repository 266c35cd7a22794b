//! Setting a condition while keeping `lastTransitionTime` on updates that do not flip it.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use strata_apis::Conditions;

/// Sets condition `type_`; returns whether its status changed.
pub(crate) fn set(
    conditions: &mut Conditions,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> bool {
    let status = if status { "True" } else { "False" }.to_string();
    let existing = conditions.iter_mut().find(|c| c.type_ == type_);
    let transitioned = existing.as_ref().is_none_or(|c| c.status != status);
    let last_transition_time = match &existing {
        Some(c) if !transitioned => c.last_transition_time.clone(),
        _ => Time(now),
    };
    let condition = Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time,
    };
    match existing {
        Some(c) => *c = condition,
        None => conditions.push(condition),
    }
    transitioned
}
