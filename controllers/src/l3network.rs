//! L3Network controller: validates the subnet and reports how many addresses are in use.

use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::{
    runtime::{controller::Action, reflector::ObjectRef, watcher, Controller},
    Api, Client, ResourceExt,
};
use strata_apis::{
    condition::{LABEL_L3_NETWORK, READY},
    l3network::FieldError,
    IpAddress, L3Network, L3NetworkSpec, L3NetworkStatus,
};

use crate::{
    conditions::{self, Desired},
    Context, Error,
};

pub(crate) fn controller(client: &Client) -> Controller<L3Network> {
    Controller::new(Api::all(client.clone()), watcher::Config::default()).watches(
        Api::<IpAddress>::all(client.clone()),
        watcher::Config::default(),
        |ip| {
            ip.labels()
                .get(LABEL_L3_NETWORK)
                .map(|l3| ObjectRef::new(l3))
        },
    )
}

pub(crate) async fn reconcile(l3: Arc<L3Network>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = l3.name_any();
    if ctx.ips.wait_until_ready().await.is_err() {
        return Ok(Action::await_change());
    }
    let used = ctx
        .ips
        .state()
        .iter()
        .filter(|ip| ip.labels().get(LABEL_L3_NETWORK) == Some(&name))
        .count();
    let current = l3.status.clone().unwrap_or_default();
    let status = status(
        &current,
        &l3.spec,
        i64::try_from(used).unwrap_or(i64::MAX),
        l3.metadata.generation,
        Timestamp::now(),
    );
    if status != current {
        ctx.patch_cluster_status::<L3Network, _>("L3Network", &name, &status)
            .await?;
    }
    ctx.succeeded("L3Network", &name);
    // An invalid spec waits for the user to change it; address counts arrive as watch events.
    Ok(Action::await_change())
}

pub(crate) fn error_policy(l3: Arc<L3Network>, error: &Error, ctx: Arc<Context>) -> Action {
    let name = l3.name_any();
    Action::requeue(ctx.failed("L3Network", &name, error))
}

fn status(
    current: &L3NetworkStatus,
    spec: &L3NetworkSpec,
    used: i64,
    generation: Option<i64>,
    now: Timestamp,
) -> L3NetworkStatus {
    let mut status = current.clone();
    status.observed_generation = generation;
    status.used_ips = Some(used);
    let ready = match spec.subnet() {
        Ok(subnet) => {
            let total = i64::try_from(subnet.size()).unwrap_or(i64::MAX);
            status.total_ips = Some(total);
            status.available_ips = Some(total.saturating_sub(used).max(0));
            Desired::new(
                READY,
                true,
                "Valid",
                format!("{} addresses in {}", subnet.size(), subnet.net),
            )
        }
        Err(FieldError { field, reason }) => {
            status.total_ips = None;
            status.available_ips = None;
            Desired::new(READY, false, "InvalidSpec", format!("{field}: {reason}"))
        }
    };
    conditions::set(&mut status.conditions, ready, generation, now);
    status
}

#[cfg(test)]
mod tests {
    use strata_apis::IpRange;

    use super::*;

    fn spec(cidr: &str, start: &str, end: &str) -> L3NetworkSpec {
        L3NetworkSpec {
            cidr: cidr.into(),
            gateway: "10.0.0.1".into(),
            ip_ranges: vec![IpRange {
                start: start.into(),
                end: end.into(),
            }],
            ..L3NetworkSpec::default()
        }
    }

    #[test]
    fn a_valid_network_reports_its_size_and_usage() {
        let s = status(
            &L3NetworkStatus::default(),
            &spec("10.0.0.0/24", "10.0.0.10", "10.0.0.19"),
            3,
            Some(4),
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(
            (s.total_ips, s.used_ips, s.available_ips),
            (Some(10), Some(3), Some(7))
        );
        assert_eq!(s.observed_generation, Some(4));
        assert!(conditions::is_true(&s.conditions, READY));
    }

    #[test]
    fn an_invalid_network_names_the_field() {
        let s = status(
            &L3NetworkStatus::default(),
            &spec("10.0.0.0/24", "10.0.0.10", "10.0.1.19"),
            0,
            Some(1),
            Timestamp::UNIX_EPOCH,
        );
        let ready = conditions::get(&s.conditions, READY).expect("Ready");
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason, "InvalidSpec");
        assert!(
            ready.message.starts_with("spec.ipRanges[0].end"),
            "{}",
            ready.message
        );
        assert_eq!((s.total_ips, s.available_ips), (None, None));
    }

    #[test]
    fn a_full_network_has_nothing_available_even_after_its_ranges_shrink() {
        let spec = spec("10.0.0.0/24", "10.0.0.10", "10.0.0.19");
        let full = status(
            &L3NetworkStatus::default(),
            &spec,
            10,
            None,
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(full.available_ips, Some(0));
        // Addresses handed out before a range was narrowed still count as used.
        let over = status(&full, &spec, 12, None, Timestamp::UNIX_EPOCH);
        assert_eq!((over.used_ips, over.available_ips), (Some(12), Some(0)));
    }
}
