//! SecurityGroup: stateful firewall rules for the VM NICs that join it.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{cel::is_cidr4, Conditions, PortRange};

/// A SecurityGroup is a set of stateful firewall rules applied on each host to the NICs that
/// list it (`VirtualMachine.spec.nics[].securityGroups`). Traffic no rule matches meets the
/// default policy of its direction; replies to allowed traffic always pass.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "strata.io",
    version = "v1alpha1",
    kind = "SecurityGroup",
    namespaced,
    status = "SecurityGroupStatus",
    shortname = "sg",
    category = "strata",
    printcolumn = r#"{"name":"Ingress","type":"string","jsonPath":".spec.defaultIngressPolicy"}"#,
    printcolumn = r#"{"name":"Egress","type":"string","jsonPath":".spec.defaultEgressPolicy"}"#,
    printcolumn = r#"{"name":"NICs","type":"integer","jsonPath":".status.nicCount"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SecurityGroupSpec {
    /// Rules for traffic into the NICs, evaluated by ascending priority.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    pub ingress_rules: Vec<SecurityGroupRule>,
    /// Rules for traffic out of the NICs, evaluated by ascending priority.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    pub egress_rules: Vec<SecurityGroupRule>,
    /// What happens to incoming traffic no rule matches.
    #[serde(default = "drop")]
    pub default_ingress_policy: RuleAction,
    /// What happens to outgoing traffic no rule matches.
    #[serde(default)]
    pub default_egress_policy: RuleAction,
}

fn drop() -> RuleAction {
    RuleAction::Drop
}

/// One firewall rule. With neither `cidr` nor `remoteGroup` it matches any peer.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.cidr) || !has(self.remoteGroup)").message("cidr and remoteGroup are mutually exclusive"),
    validation = Rule::new("!has(self.ports) || self.protocol == 'TCP' || self.protocol == 'UDP'").message("ports are only allowed for TCP and UDP").field_path(".ports")
)]
pub struct SecurityGroupRule {
    /// IP protocol the rule matches.
    pub protocol: Protocol,
    /// Destination ports, for TCP and UDP; all ports when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<PortRange>,
    /// Peer addresses, e.g. `0.0.0.0/0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 18))]
    #[x_kube(validation = Rule::new(is_cidr4("self")).message("cidr must be an IPv4 CIDR such as 10.0.0.0/24"))]
    pub cidr: Option<String>,
    /// Peers are the NICs of this SecurityGroup (in the same namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub remote_group: Option<String>,
    /// Lower numbers are evaluated first.
    #[serde(default = "default_priority")]
    #[schemars(range(min = 1, max = 1000))]
    pub priority: i32,
    /// What happens to matching traffic.
    #[serde(default)]
    pub action: RuleAction,
    /// Free-form text shown to users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub description: Option<String>,
}

fn default_priority() -> i32 {
    100
}

/// IP protocol a rule matches.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, JsonSchema, PartialEq, Eq)]
pub enum Protocol {
    TCP,
    UDP,
    ICMP,
    /// Any protocol.
    ALL,
}

/// What happens to traffic.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
pub enum RuleAction {
    /// Let it through.
    #[default]
    Accept,
    /// Drop it silently.
    Drop,
}

/// Observed state of a SecurityGroup.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecurityGroupStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// NICs the rules are applied to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic_count: Option<i64>,
    /// `Ready` is True once every host has the current rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Conditions,
}
