//! Standard conditions, computed in one place: `lastTransitionTime` moves only when the status
//! flips, so watchers (kstatus, `kubectl wait`) see real transitions.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use strata_apis::Conditions;

/// A condition to set, without the bookkeeping fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Desired {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Desired {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// Sets `desired` in `conditions`, keeping the transition time when the status is unchanged.
pub(crate) fn set(
    conditions: &mut Conditions,
    desired: Desired,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = if desired.status { "True" } else { "False" }.to_string();
    let existing = conditions.iter_mut().find(|c| c.type_ == desired.type_);
    let last_transition_time = match &existing {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Time(now),
    };
    let condition = Condition {
        type_: desired.type_.to_string(),
        status,
        reason: desired.reason,
        message: desired.message,
        observed_generation: generation,
        last_transition_time,
    };
    match existing {
        Some(c) => *c = condition,
        None => conditions.push(condition),
    }
}

/// The condition of `type_`, if present.
pub(crate) fn get<'a>(conditions: &'a Conditions, type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether condition `type_` is present and True.
pub(crate) fn is_true(conditions: &Conditions, type_: &str) -> bool {
    get(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::SignedDuration;
    use strata_apis::condition::READY;

    use super::*;

    #[test]
    fn transition_time_moves_only_when_the_status_flips() {
        let t0 = Timestamp::UNIX_EPOCH;
        let t1 = t0 + SignedDuration::from_secs(10);
        let t2 = t0 + SignedDuration::from_secs(20);
        let mut conditions = Conditions::new();

        set(
            &mut conditions,
            Desired::new(READY, false, "Pending", "a"),
            Some(1),
            t0,
        );
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].last_transition_time.0, t0);

        set(
            &mut conditions,
            Desired::new(READY, false, "Other", "b"),
            Some(2),
            t1,
        );
        assert_eq!(
            conditions[0].last_transition_time.0, t0,
            "no flip, same time"
        );
        assert_eq!(conditions[0].reason, "Other");
        assert_eq!(conditions[0].message, "b");
        assert_eq!(conditions[0].observed_generation, Some(2));

        set(
            &mut conditions,
            Desired::new(READY, true, "Running", "c"),
            Some(2),
            t2,
        );
        assert_eq!(conditions[0].last_transition_time.0, t2);
        assert!(is_true(&conditions, READY));
        assert_eq!(conditions.len(), 1);
    }

    #[test]
    fn conditions_of_other_types_are_left_alone() {
        let t0 = Timestamp::UNIX_EPOCH;
        let mut conditions = Conditions::new();
        set(
            &mut conditions,
            Desired::new("Scheduled", true, "Scheduled", ""),
            None,
            t0,
        );
        set(
            &mut conditions,
            Desired::new(READY, false, "Starting", ""),
            None,
            t0,
        );
        assert_eq!(conditions.len(), 2);
        assert!(is_true(&conditions, "Scheduled"));
        assert!(!is_true(&conditions, READY));
        assert!(get(&conditions, "Missing").is_none());
    }
}
