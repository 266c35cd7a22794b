//! L3Network: an IP subnet with a range VMs take addresses from.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Conditions;

/// An L3Network is an IPv4 subnet. VMs with a NIC on it get a unique address from `ipRange`;
/// each allocated address is an IpAddress object, so no address is ever handed out twice.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[kube(
    group = "strata.io",
    version = "v1alpha1",
    kind = "L3Network",
    status = "L3NetworkStatus",
    shortname = "l3",
    category = "strata",
    printcolumn = r#"{"name":"CIDR","type":"string","jsonPath":".spec.cidr"}"#,
    printcolumn = r#"{"name":"Gateway","type":"string","jsonPath":".spec.gateway"}"#,
    printcolumn = r#"{"name":"Used","type":"integer","jsonPath":".status.usedIps"}"#,
    printcolumn = r#"{"name":"Total","type":"integer","jsonPath":".status.totalIps"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct L3NetworkSpec {
    /// The subnet, e.g. `10.10.0.0/20`.
    pub cidr: String,
    /// The gateway address; inside `cidr` and outside `ipRange`.
    pub gateway: String,
    /// The addresses VMs are given.
    pub ip_range: IpRange,
}

/// An inclusive range of IPv4 addresses.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IpRange {
    /// First address of the range.
    pub start: String,
    /// Last address of the range (inclusive).
    pub end: String,
}

/// Observed state of an L3Network.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct L3NetworkStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Addresses in `ipRange`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_ips: Option<i64>,
    /// Addresses currently allocated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_ips: Option<i64>,
    /// `Ready` is False with a reason when the spec is invalid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Conditions,
}

/// A validated L3Network spec in numeric form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub net: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
}

/// A spec field that fails validation, named by its JSON path.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: &'static str,
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> FieldError {
    FieldError {
        field,
        reason: reason.into(),
    }
}

impl L3NetworkSpec {
    /// Checks that the CIDR, gateway and range are well formed and consistent.
    pub fn subnet(&self) -> Result<Subnet, FieldError> {
        let net: Ipv4Net = self
            .cidr
            .parse()
            .map_err(|_| invalid("spec.cidr", format!("{:?} is not an IPv4 CIDR", self.cidr)))?;
        let addr = |field, text: &str| {
            text.parse::<Ipv4Addr>()
                .map_err(|_| invalid(field, format!("{text:?} is not an IPv4 address")))
        };
        let gateway = addr("spec.gateway", &self.gateway)?;
        let start = addr("spec.ipRange.start", &self.ip_range.start)?;
        let end = addr("spec.ipRange.end", &self.ip_range.end)?;
        if !net.contains(&gateway) {
            return Err(invalid(
                "spec.gateway",
                format!("{gateway} is outside {net}"),
            ));
        }
        for (field, a) in [("spec.ipRange.start", start), ("spec.ipRange.end", end)] {
            if !net.contains(&a) || a == net.network() || a == net.broadcast() {
                return Err(invalid(
                    field,
                    format!("{a} is not a host address of {net}"),
                ));
            }
        }
        if start > end {
            return Err(invalid(
                "spec.ipRange",
                format!("start {start} is after end {end}"),
            ));
        }
        if (start..=end).contains(&gateway) {
            return Err(invalid(
                "spec.ipRange",
                format!("range contains the gateway {gateway}"),
            ));
        }
        Ok(Subnet {
            net,
            gateway,
            start,
            end,
        })
    }
}

impl Subnet {
    /// Number of addresses in the range.
    pub fn size(&self) -> u64 {
        u64::from(u32::from(self.end)) - u64::from(u32::from(self.start)) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(cidr: &str, gw: &str, start: &str, end: &str) -> L3NetworkSpec {
        L3NetworkSpec {
            cidr: cidr.into(),
            gateway: gw.into(),
            ip_range: IpRange {
                start: start.into(),
                end: end.into(),
            },
        }
    }

    #[test]
    fn accepts_a_consistent_subnet() {
        let s = spec("10.0.0.0/22", "10.0.0.1", "10.0.0.10", "10.0.3.250")
            .subnet()
            .unwrap();
        assert_eq!(s.size(), 1009);
    }

    #[test]
    fn names_the_field_that_is_wrong() {
        let field = |s: L3NetworkSpec| s.subnet().unwrap_err().field;
        assert_eq!(
            field(spec("10.0.0.0/33", "10.0.0.1", "10.0.0.2", "10.0.0.9")),
            "spec.cidr"
        );
        assert_eq!(
            field(spec("10.0.0.0/24", "10.0.1.1", "10.0.0.2", "10.0.0.9")),
            "spec.gateway"
        );
        assert_eq!(
            field(spec("10.0.0.0/24", "10.0.0.1", "10.0.0.0", "10.0.0.9")),
            "spec.ipRange.start"
        );
        assert_eq!(
            field(spec("10.0.0.0/24", "10.0.0.1", "10.0.0.2", "10.0.0.255")),
            "spec.ipRange.end"
        );
        assert_eq!(
            field(spec("10.0.0.0/24", "10.0.0.1", "10.0.0.9", "10.0.0.2")),
            "spec.ipRange"
        );
        assert_eq!(
            field(spec("10.0.0.0/24", "10.0.0.5", "10.0.0.2", "10.0.0.9")),
            "spec.ipRange"
        );
    }
}
