//! IpAddress: one allocated address of an L3Network.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// An IpAddress records that one address of an L3Network is taken. Its name is derived from the
/// network and the address (`<l3network>.<a>-<b>-<c>-<d>`), so creating it is the allocation:
/// the API server refuses a second object of the same name, which makes addresses unique by
/// construction rather than by read-then-write.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "strata.io",
    version = "v1alpha1",
    kind = "IpAddress",
    shortname = "ip",
    category = "strata",
    printcolumn = r#"{"name":"L3Network","type":"string","jsonPath":".spec.l3Network"}"#,
    printcolumn = r#"{"name":"Address","type":"string","jsonPath":".spec.address"}"#,
    printcolumn = r#"{"name":"Owner","type":"string","jsonPath":".spec.owner"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    selectable = ".spec.l3Network"
)]
#[serde(rename_all = "camelCase")]
pub struct IpAddressSpec {
    /// The L3Network the address belongs to.
    pub l3_network: String,
    /// The IPv4 address.
    #[schemars(length(max = 15))]
    #[x_kube(validation = crate::cel::ipv4("address"))]
    pub address: String,
    /// The holder, as `<namespace>/<name>` of a VirtualMachine.
    pub owner: String,
    /// The holder's uid, so a VM re-created under the same name does not inherit the address.
    pub owner_uid: String,
}

impl IpAddress {
    /// The object name that stands for `address` on `l3_network`.
    pub fn object_name(l3_network: &str, address: std::net::Ipv4Addr) -> String {
        let [a, b, c, d] = address.octets();
        format!("{l3_network}.{a}-{b}-{c}-{d}")
    }
}
