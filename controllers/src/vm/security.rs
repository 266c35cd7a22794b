//! Security groups: each VM NIC's `securityGroups` resolved into the firewall its host applies.
//!
//! The NIC's groups are merged (pure, [`merge`]): their rules are concatenated per direction
//! and sorted by priority (stable, so equal priorities keep the groups' order), and a default
//! policy is `Accept` if any group's is. A rule's `remoteGroup` becomes one `/32` rule per
//! address of the NICs in that group, read from the VM cache at resolve time. A group's members
//! joining, leaving or getting their address change its `status.nicCount` (the SecurityGroup
//! controller), which wakes the VMs in groups naming it ([`RemoteGroups`]); a member whose address
//! changes without the count changing is picked up on those VMs' next reconcile.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Mutex, PoisonError},
};

use kube::{Api, ResourceExt};
use strata_apis::{
    securitygroup::RuleAction, SecurityGroup, SecurityGroupRule, SecurityGroupSpec, VirtualMachine,
    VmiNicSecurity, VmiSecurityRule,
};

use super::Problem;
use crate::{Context, Error};

pub(crate) const SECURITY_GROUP_NOT_FOUND: &str = "SecurityGroupNotFound";

/// Which groups' rules name which groups as `remoteGroup`, learned from the SecurityGroup watch,
/// so a change in a group's members wakes the VMs whose rules list them.
#[derive(Debug, Default)]
pub(crate) struct RemoteGroups(Mutex<HashMap<String, BTreeSet<String>>>);

impl RemoteGroups {
    /// Records `sg`'s remote groups; returns the groups (same namespace) naming `sg` as theirs.
    pub fn record(&self, sg: &SecurityGroup) -> BTreeSet<String> {
        let namespace = sg.namespace().unwrap_or_default();
        let key = |name: &str| format!("{namespace}/{name}");
        let remotes = sg
            .spec
            .ingress_rules
            .iter()
            .chain(&sg.spec.egress_rules)
            .filter_map(|r| r.remote_group.as_deref())
            .map(key)
            .collect();
        let mut seen = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if sg.metadata.deletion_timestamp.is_some() {
            seen.remove(&key(&sg.name_any()));
        } else {
            seen.insert(key(&sg.name_any()), remotes);
        }
        let me = key(&sg.name_any());
        seen.iter()
            .filter(|(_, remotes)| remotes.contains(&me))
            .filter_map(|(group, _)| {
                group
                    .strip_prefix(&format!("{namespace}/"))
                    .map(String::from)
            })
            .collect()
    }
}

/// The firewall of each of `vm`'s NICs (`None` for a NIC in no group), or the first group
/// that does not exist.
pub(crate) async fn resolve(
    ctx: &Context,
    vm: &VirtualMachine,
) -> Result<Result<Vec<Option<VmiNicSecurity>>, Problem>, Error> {
    let namespace = vm.namespace().unwrap_or_default();
    let api: Api<SecurityGroup> = Api::namespaced(ctx.client.clone(), &namespace);
    let vms = ctx.inventory.vms.state();
    let members = |group: &str| members(vms.iter().map(|vm| vm.as_ref()), &namespace, group);
    let mut out = Vec::with_capacity(vm.spec.nics.len());
    for nic in &vm.spec.nics {
        if nic.security_groups.is_empty() {
            out.push(None);
            continue;
        }
        let mut groups = Vec::with_capacity(nic.security_groups.len());
        for name in &nic.security_groups {
            let group = api.get_opt(name).await.map_err(|source| Error::Get {
                kind: "SecurityGroup".into(),
                name: format!("{namespace}/{name}"),
                source,
            })?;
            match group {
                Some(group) => groups.push((name.clone(), group.spec)),
                None => {
                    return Ok(Err(Problem::new(
                        SECURITY_GROUP_NOT_FOUND,
                        format!("SecurityGroup {name:?} not found in namespace {namespace:?}"),
                    )))
                }
            }
        }
        out.push(Some(merge(&groups, &members)));
    }
    Ok(Ok(out))
}

/// The addresses of the NICs in `group` (VMs of `namespace`), sorted and deduplicated.
pub(crate) fn members<'a>(
    vms: impl Iterator<Item = &'a VirtualMachine>,
    namespace: &str,
    group: &str,
) -> Vec<String> {
    let mut ips: Vec<String> = vms
        .filter(|vm| vm.namespace().as_deref() == Some(namespace))
        .filter(|vm| vm.metadata.deletion_timestamp.is_none())
        .flat_map(|vm| {
            let status = vm.status.as_ref().map(|s| s.nics.as_slice()).unwrap_or(&[]);
            vm.spec
                .nics
                .iter()
                .zip(status)
                .filter(|(nic, _)| nic.security_groups.iter().any(|g| g == group))
                .map(|(_, s)| s.ip.clone())
                .filter(|ip| !ip.is_empty())
                .collect::<Vec<_>>()
        })
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// The union of a NIC's groups (pure). `members` gives a remote group's addresses.
pub(crate) fn merge(
    groups: &[(String, SecurityGroupSpec)],
    members: &dyn Fn(&str) -> Vec<String>,
) -> VmiNicSecurity {
    let rules = |pick: fn(&SecurityGroupSpec) -> &Vec<SecurityGroupRule>| {
        let mut out: Vec<VmiSecurityRule> = groups
            .iter()
            .flat_map(|(_, spec)| pick(spec).iter())
            .flat_map(|rule| resolve_rule(rule, members))
            .collect();
        out.sort_by_key(|r| r.priority);
        out
    };
    let any_accepts = |pick: fn(&SecurityGroupSpec) -> RuleAction| {
        if groups.iter().any(|(_, s)| pick(s) == RuleAction::Accept) {
            RuleAction::Accept
        } else {
            RuleAction::Drop
        }
    };
    VmiNicSecurity {
        groups: groups.iter().map(|(name, _)| name.clone()).collect(),
        ingress_rules: rules(|s| &s.ingress_rules),
        egress_rules: rules(|s| &s.egress_rules),
        default_ingress_policy: any_accepts(|s| s.default_ingress_policy),
        default_egress_policy: any_accepts(|s| s.default_egress_policy),
    }
}

fn resolve_rule(
    rule: &SecurityGroupRule,
    members: &dyn Fn(&str) -> Vec<String>,
) -> Vec<VmiSecurityRule> {
    let with = |cidr: Option<String>| VmiSecurityRule {
        protocol: rule.protocol,
        ports: rule.ports,
        cidr,
        priority: rule.priority,
        action: rule.action,
    };
    match &rule.remote_group {
        Some(group) => members(group)
            .into_iter()
            .map(|ip| with(Some(format!("{ip}/32"))))
            .collect(),
        None => vec![with(rule.cidr.clone())],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_apis::{securitygroup::Protocol, PortRange};

    fn rule(priority: i32, cidr: Option<&str>, remote: Option<&str>) -> SecurityGroupRule {
        SecurityGroupRule {
            protocol: Protocol::TCP,
            ports: Some(PortRange { start: 22, end: 22 }),
            cidr: cidr.map(Into::into),
            remote_group: remote.map(Into::into),
            priority,
            action: RuleAction::Accept,
            description: None,
        }
    }

    fn no_members(_: &str) -> Vec<String> {
        vec![]
    }

    #[test]
    fn groups_merge_by_priority_and_defaults_accept_if_any_does() {
        let web = SecurityGroupSpec {
            ingress_rules: vec![rule(200, Some("0.0.0.0/0"), None)],
            default_ingress_policy: RuleAction::Drop,
            default_egress_policy: RuleAction::Drop,
            ..Default::default()
        };
        let ssh = SecurityGroupSpec {
            ingress_rules: vec![rule(10, Some("10.0.0.0/8"), None)],
            egress_rules: vec![rule(5, None, None)],
            default_ingress_policy: RuleAction::Drop,
            default_egress_policy: RuleAction::Accept,
        };
        let sec = merge(&[("web".into(), web), ("ssh".into(), ssh)], &no_members);
        assert_eq!(sec.groups, ["web", "ssh"]);
        let prios: Vec<i32> = sec.ingress_rules.iter().map(|r| r.priority).collect();
        assert_eq!(prios, [10, 200]);
        assert_eq!(sec.ingress_rules[0].cidr.as_deref(), Some("10.0.0.0/8"));
        assert_eq!(sec.egress_rules.len(), 1);
        assert_eq!(sec.default_ingress_policy, RuleAction::Drop);
        assert_eq!(sec.default_egress_policy, RuleAction::Accept);
    }

    #[test]
    fn a_remote_group_becomes_one_rule_per_member_address() {
        let spec = SecurityGroupSpec {
            ingress_rules: vec![rule(100, None, Some("db"))],
            ..Default::default()
        };
        let members = |g: &str| {
            assert_eq!(g, "db");
            vec!["10.0.0.5".to_string(), "10.0.0.6".to_string()]
        };
        let sec = merge(&[("app".into(), spec.clone())], &members);
        let cidrs: Vec<_> = sec
            .ingress_rules
            .iter()
            .map(|r| r.cidr.clone().unwrap())
            .collect();
        assert_eq!(cidrs, ["10.0.0.5/32", "10.0.0.6/32"]);
        // No members: no peer matches, rather than every peer.
        let sec = merge(&[("app".into(), spec)], &no_members);
        assert!(sec.ingress_rules.is_empty());
    }

    #[test]
    fn members_are_the_addresses_of_nics_in_the_group() {
        let vm: VirtualMachine = serde_json::from_value(serde_json::json!({
            "apiVersion": "strata.io/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": "a", "namespace": "ns"},
            "spec": {"image": "i", "nics": [
                {"l3Network": "n1", "securityGroups": ["db"]},
                {"l3Network": "n2"}
            ]},
            "status": {"nics": [
                {"l3Network": "n1", "ip": "10.0.0.5", "mac": "m1"},
                {"l3Network": "n2", "ip": "10.1.0.5", "mac": "m2"}
            ]}
        }))
        .unwrap();
        assert_eq!(members([&vm].into_iter(), "ns", "db"), ["10.0.0.5"]);
        assert!(members([&vm].into_iter(), "other", "db").is_empty());
        assert!(members([&vm].into_iter(), "ns", "web").is_empty());
    }
}
