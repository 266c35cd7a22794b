//! Kernel object names, derived deterministically from Strata object names.
//!
//! Linux interface names are limited to 15 bytes (`IFNAMSIZ` - 1) while Strata names can be 253
//! characters, so every name here is a short kind prefix followed by a hash of the Strata
//! identity, encoded in lowercase base32 (5 bits per character). Twelve characters carry 60 bits:
//! a collision between two of the ~10^4 objects of a kind on one host has a probability around
//! 10^-10. Names are pure functions of their inputs, so the node agent and the libvirt driver
//! agree on them without sharing state, and a restarted agent recomputes exactly the names it used
//! before (which is what lets it tell its own objects from orphans by prefix).
//!
//! The prefixes (`sb-`, `sx-`, `sv-`, `st-`, `sd-`, `se-`, `sn`) are reserved for Strata: the
//! agent's orphan sweep removes links and namespaces with these prefixes that it cannot account
//! for.

use sha2::{Digest, Sha256};

/// Maximum length of a Linux interface name.
pub const IFNAME_MAX: usize = 15;

/// Prefix of the per-L2 bridges.
pub const BRIDGE_PREFIX: &str = "sb-";
/// Prefix of the per-L2 VXLAN devices.
pub const VXLAN_PREFIX: &str = "sx-";
/// Prefix of VLAN sub-interfaces whose natural `<if>.<id>` name would be too long.
pub const VLAN_PREFIX: &str = "sv-";
/// Prefix of VM NIC taps (and, in tests, of the veths that stand in for taps).
pub const TAP_PREFIX: &str = "st-";
/// Prefix of the host end of the veth from a bridge into an L3 namespace.
pub const L3_VETH_PREFIX: &str = "sd-";
/// Prefix of the host end of the veth from a public bridge into an L3 namespace (EIP/port forwarding).
pub const PUBLIC_VETH_PREFIX: &str = "se-";
/// Prefix of the per-L3 network namespaces (followed by the 3-character scope tag).
pub const NETNS_PREFIX: &str = "sn";

/// The L3 namespace's interface on the L3's bridge (the DHCP server, gateway and metadata address).
pub const L3_INNER_IF: &str = "dhcp0";

/// Lowercase RFC 4648 base32 of the first `chars * 5` bits of SHA-256 over the parts, joined by NUL
/// (NUL cannot occur in Kubernetes names, so `("a", "bc")` and `("ab", "c")` differ).
pub fn hash(parts: &[&str], chars: usize) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut h = Sha256::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h.update([0u8]);
        }
        h.update(p.as_bytes());
    }
    let digest = h.finalize();
    let mut out = String::with_capacity(chars);
    let mut acc: u64 = 0;
    let mut bits = 0;
    let mut bytes = digest.iter();
    while out.len() < chars {
        if bits < 5 {
            acc = (acc << 8) | u64::from(*bytes.next().expect("sha256 has 51 base32 chars"));
            bits += 8;
        }
        bits -= 5;
        out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
    }
    out
}

/// The bridge of an L2 network.
pub fn bridge(l2: &str) -> String {
    format!("{BRIDGE_PREFIX}{}", hash(&["bridge", l2], 12))
}

/// The VXLAN device of an L2 network.
pub fn vxlan(l2: &str) -> String {
    format!("{VXLAN_PREFIX}{}", hash(&["vxlan", l2], 12))
}

/// The VLAN sub-interface of `parent` for `vlan_id`: the conventional `<if>.<id>` when it fits
/// (what operators expect to see in `ip link`), a hashed name otherwise.
pub fn vlan(parent: &str, vlan_id: u16) -> String {
    let natural = format!("{parent}.{vlan_id}");
    if natural.len() <= IFNAME_MAX {
        natural
    } else {
        format!(
            "{VLAN_PREFIX}{}",
            hash(&["vlan", parent, &vlan_id.to_string()], 12)
        )
    }
}

/// The tap of NIC number `index` of an instance (libvirt `<target dev=…/>`). `instance` should be
/// unique on the host, e.g. `<namespace>/<name>` or the VMI's uid.
pub fn tap(instance: &str, index: u32) -> String {
    format!(
        "{TAP_PREFIX}{}",
        hash(&["tap", instance, &index.to_string()], 12)
    )
}

/// The host end of the veth that connects an L3 namespace to its bridge.
pub fn l3_veth(l3: &str) -> String {
    format!("{L3_VETH_PREFIX}{}", hash(&["l3veth", l3], 12))
}

/// The host end of the veth that connects an L3 namespace to a public network's bridge.
pub fn public_veth(l3: &str, public_bridge: &str) -> String {
    format!(
        "{PUBLIC_VETH_PREFIX}{}",
        hash(&["pubveth", l3, public_bridge], 12)
    )
}

/// The L3 namespace's interface on a public network's bridge.
pub fn public_inner(public_bridge: &str) -> String {
    format!("pub-{}", hash(&["pubinner", public_bridge], 10))
}

/// Three-character tag of a driver scope (see [`l3_netns`]).
pub fn scope_tag(scope: &str) -> String {
    hash(&["scope", scope], 3)
}

/// Prefix shared by all L3 namespaces of one scope, for listing them.
pub fn netns_prefix(scope: &str) -> String {
    format!("{NETNS_PREFIX}{}", scope_tag(scope))
}

/// The namespace of an L3 network. Named namespaces (`/run/netns`) are global to the machine,
/// unlike links, which live in the driver's host namespace, so the name includes a scope (the
/// host's identity when several hosts' plumbing shares a machine, `""` in production).
pub fn l3_netns(scope: &str, l3: &str) -> String {
    format!("{}{}", netns_prefix(scope), hash(&["netns", l3], 10))
}

/// The nftables table (bridge family, host namespace) holding one NIC's security group.
pub fn sg_table(tap: &str) -> String {
    format!("strata_sg_{}", tap.replace('-', "_"))
}

/// Prefix of [`sg_table`] names.
pub const SG_TABLE_PREFIX: &str = "strata_sg_";

/// The nftables table (bridge family, host namespace) that keeps an L3 namespace local to its host.
pub fn l3_guard_table(l3_veth: &str) -> String {
    format!("strata_l3_{}", l3_veth.replace('-', "_"))
}

/// Prefix of [`l3_guard_table`] names.
pub const L3_GUARD_TABLE_PREFIX: &str = "strata_l3_";

/// The nftables table (inet family, host namespace) that marks packets of established connections
/// so that the bridge-family security-group chains can be stateful.
pub const CT_TABLE: &str = "strata_ct";

/// The nftables table (ip family, inside an L3 namespace) with the EIP and port forwarding NAT.
pub const NAT_TABLE: &str = "strata_nat";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_ifnamsiz_and_are_stable() {
        let long = "a".repeat(253);
        for n in [
            bridge(&long),
            vxlan(&long),
            vlan(&long, 4094),
            tap(&long, 15),
            l3_veth(&long),
            public_veth(&long, &long),
            public_inner(&long),
            l3_netns(&long, &long),
        ] {
            assert!(n.len() <= IFNAME_MAX, "{n} is too long");
            assert!(n
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'));
        }
        assert_eq!(bridge("l2-a"), bridge("l2-a"));
        assert_ne!(bridge("l2-a"), bridge("l2-b"));
        assert_ne!(tap("vm", 0), tap("vm", 1));
        assert_ne!(tap("vm1", 1), tap("vm", 11));
        assert_ne!(l3_netns("host-a", "l3"), l3_netns("host-b", "l3"));
        assert!(l3_netns("host-a", "l3").starts_with(&netns_prefix("host-a")));
    }

    #[test]
    fn hash_is_base32_of_sha256() {
        // sha256("") = e3b0c442…: 11100 01110 11000 01100 0100… -> 28 14 24 12 -> "4oym"
        assert_eq!(hash(&[""], 4), "4oym");
    }

    #[test]
    fn vlan_names_are_natural_when_they_fit() {
        assert_eq!(vlan("eth0", 100), "eth0.100");
        assert_eq!(vlan("enp0s31f6", 4094), "enp0s31f6.4094");
        let long = vlan("enp0s31f6abcd", 4094);
        assert!(long.starts_with(VLAN_PREFIX) && long.len() == 15);
    }
}
