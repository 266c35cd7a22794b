//! Elastic IPs and port forwarding: NAT in the L3 namespace between a public network and the L3.
//!
//! The L3 namespace (the VMs' gateway, see [`crate::l3`]) gets a veth into the public network's
//! bridge (`se-…` on the bridge, `pub-…` inside) holding every VIP this host serves, so it answers
//! ARP for them. The `ip strata_nat` table DNATs traffic for a VIP (or a VIP's port) to the VM and
//! SNATs the VM's own traffic to its EIP on the way out (recipes/eip.sh). The table is rebuilt from
//! the complete list for the L3 on every call, atomically, so it always equals the desired state.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use nftables::expr::MetaKey;
use nftables::stmt::{Statement, NAT};
use nftables::types::{NfChainType, NfFamily, NfHook};

use crate::error::{Error, Result};
use crate::exec::{self, Netns};
use crate::l3::addresses;
use crate::names;
use crate::nft::{self, TableBuilder};

/// The public network an L3 namespace reaches VIPs through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicUplink {
    /// The public L2 network's bridge on this host.
    pub bridge: String,
    /// The public L3's CIDR (VIPs are in it).
    pub cidr: Ipv4Net,
    /// The public L3's gateway, the namespace's default route (`None`: only the public subnet).
    pub gateway: Option<Ipv4Addr>,
}

/// A 1:1 NAT between a VIP and a VM's private address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Eip {
    pub vip: Ipv4Addr,
    pub private_ip: Ipv4Addr,
}

/// TCP or UDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PfProtocol {
    Tcp,
    Udp,
}

/// A port range of a VIP forwarded to a port range of a VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortForward {
    pub vip: Ipv4Addr,
    pub protocol: PfProtocol,
    /// Inclusive.
    pub external: (u16, u16),
    pub private_ip: Ipv4Addr,
    /// Inclusive; same size as `external`.
    pub internal: (u16, u16),
    /// Only sources in this CIDR are forwarded.
    pub allowed_cidr: Option<Ipv4Net>,
}

/// All EIPs and port forwardings of this host's VMs on one L3 network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatSpec {
    pub l3: String,
    pub public: PublicUplink,
    pub eips: Vec<Eip>,
    pub port_forwards: Vec<PortForward>,
}

/// Longest shifted port range expanded into one rule per port (nft 1.0.6 has no offset mapping).
const MAX_SHIFTED_RANGE: u32 = 256;

/// The NAT table for `spec` (pure).
pub fn ruleset(spec: &NatSpec) -> Result<nftables::schema::Nftables<'static>> {
    let pub_if = names::public_inner(&spec.public.bridge);
    let mut t = TableBuilder::new(NfFamily::IP, names::NAT_TABLE);
    t.base_chain("prerouting", NfChainType::NAT, NfHook::Prerouting, -100);
    t.base_chain("postrouting", NfChainType::NAT, NfHook::Postrouting, 100);
    let dnat = |addr: Ipv4Addr, port: Option<u16>| {
        Statement::DNAT(Some(NAT {
            addr: Some(nft::s(addr.to_string())),
            family: None,
            port: port.map(|p| nft::n(p.into())),
            flags: None,
        }))
    };
    for e in &spec.eips {
        t.rule(
            "prerouting",
            vec![
                nft::eq(nft::payload("ip", "daddr"), nft::s(e.vip.to_string())),
                nft::counter(),
                dnat(e.private_ip, None),
            ],
        );
        t.rule(
            "postrouting",
            vec![
                nft::eq(nft::meta(MetaKey::Oifname), nft::s(&pub_if)),
                nft::eq(
                    nft::payload("ip", "saddr"),
                    nft::s(e.private_ip.to_string()),
                ),
                nft::counter(),
                Statement::SNAT(Some(NAT {
                    addr: Some(nft::s(e.vip.to_string())),
                    family: None,
                    port: None,
                    flags: None,
                })),
            ],
        );
    }
    for pf in &spec.port_forwards {
        let (el, eh) = pf.external;
        let (il, ih) = pf.internal;
        if el > eh || il > ih || eh - el != ih - il {
            return Err(Error::Invalid(format!(
                "port forwarding {}:{el}-{eh} -> {}:{il}-{ih}: ranges must have the same size",
                pf.vip, pf.private_ip
            )));
        }
        let proto = match pf.protocol {
            PfProtocol::Tcp => "tcp",
            PfProtocol::Udp => "udp",
        };
        let base = |ports: nftables::expr::Expression<'static>| {
            let mut v = vec![nft::eq(
                nft::payload("ip", "daddr"),
                nft::s(pf.vip.to_string()),
            )];
            if let Some(c) = pf.allowed_cidr {
                v.push(nft::eq(
                    nft::payload("ip", "saddr"),
                    nft::prefix(c.network().to_string(), c.prefix_len()),
                ));
            }
            v.push(nft::eq(nft::payload("ip", "protocol"), nft::s(proto)));
            v.push(nft::eq(
                nft::payload(if proto == "tcp" { "tcp" } else { "udp" }, "dport"),
                ports,
            ));
            v.push(nft::counter());
            v
        };
        if el == il {
            // Same ports: translate the address only.
            let ports = if el == eh {
                nft::n(el.into())
            } else {
                nft::range(el.into(), eh.into())
            };
            let mut v = base(ports);
            v.push(dnat(pf.private_ip, None));
            t.rule("prerouting", v);
        } else if u32::from(eh - el) < MAX_SHIFTED_RANGE {
            for off in 0..=(eh - el) {
                let mut v = base(nft::n((el + off).into()));
                v.push(dnat(pf.private_ip, Some(il + off)));
                t.rule("prerouting", v);
            }
        } else {
            return Err(Error::Invalid(format!(
                "port forwarding {}:{el}-{eh}: shifted ranges longer than {MAX_SHIFTED_RANGE} ports are not supported",
                pf.vip
            )));
        }
    }
    Ok(t.replace())
}

pub(crate) fn ensure(host: &Netns, scope: &str, spec: &NatSpec) -> Result<()> {
    let table = ruleset(spec)?;
    let netns = names::l3_netns(scope, &spec.l3);
    if !exec::netns_list()?.contains(&netns) {
        return Err(Error::Invalid(format!(
            "L3 network {} has no namespace on this host yet",
            spec.l3
        )));
    }
    let inner = Netns::named(&netns);
    let veth = names::public_veth(&spec.l3, &spec.public.bridge);
    let pub_if = names::public_inner(&spec.public.bridge);
    if !host.link_exists(&veth)? {
        host.ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", &pub_if, "netns", &netns,
        ])?;
    }
    host.ip(&["link", "set", &veth, "master", &spec.public.bridge, "up"])?;
    let mut vips: Vec<Ipv4Addr> = spec
        .eips
        .iter()
        .map(|e| e.vip)
        .chain(spec.port_forwards.iter().map(|p| p.vip))
        .collect();
    vips.sort();
    vips.dedup();
    let want: Vec<String> = vips
        .iter()
        .map(|v| format!("{v}/{}", spec.public.cidr.prefix_len()))
        .collect();
    // Deleting an interface's primary address deletes its secondaries too unless they are
    // promoted; keep the other VIPs when one EIP goes away.
    inner.exec(
        "sysctl",
        &[
            "-qw",
            &format!("net.ipv4.conf.{pub_if}.promote_secondaries=1"),
        ],
    )?;
    for a in addresses(&inner, &pub_if)?
        .iter()
        .filter(|a| !want.contains(a))
    {
        inner.ip(&["addr", "del", a, "dev", &pub_if])?;
    }
    let have = addresses(&inner, &pub_if)?;
    for a in want.iter().filter(|a| !have.contains(a)) {
        inner.ip(&["addr", "add", a, "dev", &pub_if])?;
    }
    inner.ip(&["link", "set", &pub_if, "up"])?;
    if let Some(gw) = spec.public.gateway {
        if !want.is_empty() {
            inner.ip(&[
                "route",
                "replace",
                "default",
                "via",
                &gw.to_string(),
                "dev",
                &pub_if,
            ])?;
        }
    }
    inner.nft_apply(names::NAT_TABLE, &table)
}

/// Removes the L3's NAT and its public veth.
pub(crate) fn remove(host: &Netns, scope: &str, l3: &str, public_bridge: &str) -> Result<()> {
    let netns = names::l3_netns(scope, l3);
    if exec::netns_list()?.contains(&netns) {
        Netns::named(&netns).nft_delete_table("ip", names::NAT_TABLE)?;
    }
    let veth = names::public_veth(l3, public_bridge);
    if host.link_exists(&veth)? {
        host.ip(&["link", "del", &veth])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> NatSpec {
        NatSpec {
            l3: "priv".into(),
            public: PublicUplink {
                bridge: "sb-pub".into(),
                cidr: "198.51.100.0/24".parse().unwrap(),
                gateway: None,
            },
            eips: vec![],
            port_forwards: vec![],
        }
    }

    #[test]
    fn shifted_port_ranges_expand_per_port_and_mismatched_sizes_fail() {
        let mut s = spec();
        s.port_forwards.push(PortForward {
            vip: "198.51.100.9".parse().unwrap(),
            protocol: PfProtocol::Tcp,
            external: (8080, 8082),
            private_ip: "10.0.0.5".parse().unwrap(),
            internal: (80, 82),
            allowed_cidr: None,
        });
        let json = serde_json::to_value(ruleset(&s).unwrap()).unwrap();
        let dnats = json.to_string().matches("\"dnat\"").count();
        assert_eq!(dnats, 3);
        s.port_forwards[0].internal = (80, 81);
        assert!(matches!(ruleset(&s), Err(Error::Invalid(_))));
    }
}
