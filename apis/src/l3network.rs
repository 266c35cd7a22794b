//! L3Network: an IPv4 subnet on an L2 network, with the ranges VMs take addresses from.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    cel::{self, ipv4_int, is_cidr4, is_ipv4},
    Conditions,
};

/// An L3Network is an IPv4 subnet on an L2Network. VMs with a NIC on it get a unique address
/// from `ipRanges`; each allocated address is an IpAddress object, so no address is ever
/// handed out twice. DHCP, DNS and user data are served on every host for its own VMs.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "strata.io",
    version = "v1alpha1",
    kind = "L3Network",
    status = "L3NetworkStatus",
    shortname = "l3",
    category = "strata",
    printcolumn = r#"{"name":"L2","type":"string","jsonPath":".spec.l2Network"}"#,
    printcolumn = r#"{"name":"Category","type":"string","jsonPath":".spec.category"}"#,
    printcolumn = r#"{"name":"CIDR","type":"string","jsonPath":".spec.cidr"}"#,
    printcolumn = r#"{"name":"Used","type":"integer","jsonPath":".status.usedIps"}"#,
    printcolumn = r#"{"name":"Available","type":"integer","jsonPath":".status.availableIps"}"#,
    printcolumn = r#"{"name":"Gateway","type":"string","priority":1,"jsonPath":".spec.gateway"}"#,
    printcolumn = r#"{"name":"Total","type":"integer","priority":1,"jsonPath":".status.totalIps"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    selectable = ".spec.l2Network",
    selectable = ".spec.category"
)]
#[x_kube(
    validation = Rule::new(format!("!{} || !{} || cidr(self.cidr).containsIP(self.gateway)", is_cidr4("self.cidr"), is_ipv4("self.gateway"))).message("gateway must be inside cidr").field_path(".gateway"),
    validation = Rule::new(format!("!{} || self.ipRanges.all(r, !{} || !{} || (cidr(self.cidr).containsIP(r.start) && cidr(self.cidr).containsIP(r.end)))", is_cidr4("self.cidr"), is_ipv4("r.start"), is_ipv4("r.end"))).message("every ipRange must be inside cidr").field_path(".ipRanges"),
    validation = Rule::new(format!("!{} || self.ipRanges.all(r, !{} || !{} || {g} < {} || {g} > {})", is_ipv4("self.gateway"), is_ipv4("r.start"), is_ipv4("r.end"), ipv4_int("r.start"), ipv4_int("r.end"), g = ipv4_int("self.gateway"))).message("gateway must be outside every ipRange").field_path(".gateway"),
    validation = Rule::new(ranges_disjoint()).message("ipRanges must not overlap").field_path(".ipRanges")
)]
#[serde(rename_all = "camelCase")]
pub struct L3NetworkSpec {
    /// The L2Network the subnet lives on.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = cel::immutable("l2Network"))]
    pub l2_network: String,
    /// Who the network is for: `Public` networks give EIPs and port-forwarding VIPs,
    /// `Private` networks hold tenant VMs, `System` networks carry management traffic.
    #[serde(default)]
    pub category: L3Category,
    /// The subnet, e.g. `10.10.0.0/20`.
    #[schemars(length(max = 18))]
    #[x_kube(validation = cel::cidr4("cidr"), validation = cel::immutable("cidr"))]
    pub cidr: String,
    /// The gateway address; inside `cidr` and outside every range.
    #[schemars(length(max = 15))]
    #[x_kube(validation = cel::ipv4("gateway"))]
    pub gateway: String,
    /// The addresses VMs are given: disjoint ranges inside `cidr`.
    #[schemars(length(min = 1, max = 16))]
    pub ip_ranges: Vec<IpRange>,
    /// DNS servers handed out by DHCP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4), inner(length(max = 15)))]
    #[x_kube(validation = Rule::new(format!("self.all(d, {})", is_ipv4("d"))).message("every dns entry must be an IPv4 address"))]
    pub dns: Vec<String>,
    /// DNS search domain handed out by DHCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub dns_domain: Option<String>,
    /// Services the flat network provider runs for VMs on this network.
    #[serde(default = "default_services")]
    #[schemars(length(max = 6))]
    pub network_services: Vec<NetworkService>,
}

fn default_services() -> Vec<NetworkService> {
    vec![
        NetworkService::DHCP,
        NetworkService::DNS,
        NetworkService::UserData,
        NetworkService::SecurityGroup,
    ]
}

/// Every range overlaps exactly one range: itself. This also refuses duplicates.
fn ranges_disjoint() -> String {
    let valid = |r: &str| {
        format!(
            "{} && {}",
            is_ipv4(&format!("{r}.start")),
            is_ipv4(&format!("{r}.end"))
        )
    };
    let int = |r: &str, end: &str| ipv4_int(&format!("{r}.{end}"));
    format!(
        "self.ipRanges.all(a, !({va}) || self.ipRanges.exists_one(b, {vb} && {} <= {} && {} <= {}))",
        int("a", "start"),
        int("b", "end"),
        int("b", "start"),
        int("a", "end"),
        va = valid("a"),
        vb = valid("b"),
    )
}

/// Who an L3 network is for.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
pub enum L3Category {
    /// Reachable from outside: EIP and port-forwarding VIPs come from here.
    Public,
    /// Tenant VMs.
    #[default]
    Private,
    /// Management and storage traffic of the infrastructure itself.
    System,
}

/// A service the flat network provider runs for VMs on an L3 network.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, JsonSchema, PartialEq, Eq)]
pub enum NetworkService {
    /// Addresses by DHCP, served on every host for its own VMs.
    DHCP,
    /// A DNS forwarder at the DHCP server's address.
    DNS,
    /// Cloud-init metadata at 169.254.169.254.
    UserData,
    /// Security group rules on the VMs' NICs.
    SecurityGroup,
    /// Elastic IPs (on Public networks).
    EIP,
    /// Port forwarding (on Public networks).
    PortForwarding,
}

/// An inclusive range of IPv4 addresses.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(format!("!{} || !{} || {} <= {}", is_ipv4("self.start"), is_ipv4("self.end"), ipv4_int("self.start"), ipv4_int("self.end"))).message("start must not be after end"))]
pub struct IpRange {
    /// First address of the range.
    #[schemars(length(max = 15))]
    #[x_kube(validation = cel::ipv4("start"))]
    pub start: String,
    /// Last address of the range (inclusive).
    #[schemars(length(max = 15))]
    #[x_kube(validation = cel::ipv4("end"))]
    pub end: String,
}

/// Observed state of an L3Network.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct L3NetworkStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Addresses in `ipRanges`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_ips: Option<i64>,
    /// Addresses currently allocated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_ips: Option<i64>,
    /// Addresses still free.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_ips: Option<i64>,
    /// `Ready` is False with a reason when the spec is invalid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Conditions,
}

/// A validated L3Network spec in numeric form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    pub net: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// Inclusive `(start, end)` ranges, sorted and disjoint.
    pub ranges: Vec<(Ipv4Addr, Ipv4Addr)>,
}

/// A spec field that fails validation, named by its JSON path.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        reason: reason.into(),
    }
}

impl L3NetworkSpec {
    /// Checks what the CEL rules check, and what they cannot: that no range includes the
    /// network or broadcast address.
    pub fn subnet(&self) -> Result<Subnet, FieldError> {
        let net: Ipv4Net = self
            .cidr
            .parse()
            .map_err(|_| invalid("spec.cidr", format!("{:?} is not an IPv4 CIDR", self.cidr)))?;
        let addr = |field: String, text: &str| {
            text.parse::<Ipv4Addr>()
                .map_err(|_| invalid(field, format!("{text:?} is not an IPv4 address")))
        };
        let gateway = addr("spec.gateway".into(), &self.gateway)?;
        if !net.contains(&gateway) {
            return Err(invalid(
                "spec.gateway",
                format!("{gateway} is outside {net}"),
            ));
        }
        if self.ip_ranges.is_empty() {
            return Err(invalid("spec.ipRanges", "at least one range is required"));
        }
        let mut ranges = Vec::with_capacity(self.ip_ranges.len());
        for (i, range) in self.ip_ranges.iter().enumerate() {
            let field = |end: &str| format!("spec.ipRanges[{i}].{end}");
            let start = addr(field("start"), &range.start)?;
            let end = addr(field("end"), &range.end)?;
            for (which, a) in [("start", start), ("end", end)] {
                if !net.contains(&a) || a == net.network() || a == net.broadcast() {
                    return Err(invalid(
                        field(which),
                        format!("{a} is not a host address of {net}"),
                    ));
                }
            }
            if start > end {
                return Err(invalid(
                    format!("spec.ipRanges[{i}]"),
                    format!("start {start} is after end {end}"),
                ));
            }
            if (start..=end).contains(&gateway) {
                return Err(invalid(
                    format!("spec.ipRanges[{i}]"),
                    format!("range contains the gateway {gateway}"),
                ));
            }
            ranges.push((start, end));
        }
        ranges.sort();
        if let Some(pair) = ranges.windows(2).find(|w| w[1].0 <= w[0].1) {
            return Err(invalid(
                "spec.ipRanges",
                format!(
                    "{}-{} overlaps {}-{}",
                    pair[0].0, pair[0].1, pair[1].0, pair[1].1
                ),
            ));
        }
        Ok(Subnet {
            net,
            gateway,
            ranges,
        })
    }
}

impl Subnet {
    /// Number of addresses in the ranges.
    pub fn size(&self) -> u64 {
        self.ranges
            .iter()
            .map(|(s, e)| u64::from(u32::from(*e)) - u64::from(u32::from(*s)) + 1)
            .sum()
    }

    /// Every address of the ranges, lowest first.
    pub fn addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.ranges
            .iter()
            .flat_map(|(s, e)| (u32::from(*s)..=u32::from(*e)).map(Ipv4Addr::from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(cidr: &str, gw: &str, ranges: &[(&str, &str)]) -> L3NetworkSpec {
        L3NetworkSpec {
            l2_network: "l2".into(),
            cidr: cidr.into(),
            gateway: gw.into(),
            ip_ranges: ranges
                .iter()
                .map(|(s, e)| IpRange {
                    start: (*s).into(),
                    end: (*e).into(),
                })
                .collect(),
            ..L3NetworkSpec::default()
        }
    }

    #[test]
    fn accepts_a_consistent_subnet() {
        let s = spec(
            "10.0.0.0/22",
            "10.0.0.1",
            &[("10.0.2.0", "10.0.3.250"), ("10.0.0.10", "10.0.1.255")],
        )
        .subnet()
        .unwrap();
        assert_eq!(s.size(), 1009);
        assert_eq!(s.ranges[0].0, Ipv4Addr::new(10, 0, 0, 10), "sorted");
        assert_eq!(s.addresses().count(), 1009);
    }

    #[test]
    fn names_the_field_that_is_wrong() {
        let field = |s: L3NetworkSpec| s.subnet().unwrap_err().field;
        let one = |r: (&'static str, &'static str)| [r];
        assert_eq!(
            field(spec(
                "10.0.0.0/33",
                "10.0.0.1",
                &one(("10.0.0.2", "10.0.0.9"))
            )),
            "spec.cidr"
        );
        assert_eq!(
            field(spec(
                "10.0.0.0/24",
                "10.0.1.1",
                &one(("10.0.0.2", "10.0.0.9"))
            )),
            "spec.gateway"
        );
        assert_eq!(
            field(spec(
                "10.0.0.0/24",
                "10.0.0.1",
                &one(("10.0.0.0", "10.0.0.9"))
            )),
            "spec.ipRanges[0].start"
        );
        assert_eq!(
            field(spec(
                "10.0.0.0/24",
                "10.0.0.1",
                &one(("10.0.0.2", "10.0.0.255"))
            )),
            "spec.ipRanges[0].end"
        );
        assert_eq!(
            field(spec(
                "10.0.0.0/24",
                "10.0.0.1",
                &one(("10.0.0.9", "10.0.0.2"))
            )),
            "spec.ipRanges[0]"
        );
        assert_eq!(
            field(spec(
                "10.0.0.0/24",
                "10.0.0.5",
                &one(("10.0.0.2", "10.0.0.9"))
            )),
            "spec.ipRanges[0]"
        );
        assert_eq!(
            field(spec(
                "10.0.0.0/24",
                "10.0.0.1",
                &[("10.0.0.2", "10.0.0.9"), ("10.0.0.9", "10.0.0.20")]
            )),
            "spec.ipRanges"
        );
        assert_eq!(field(spec("10.0.0.0/24", "10.0.0.1", &[])), "spec.ipRanges");
    }
}
