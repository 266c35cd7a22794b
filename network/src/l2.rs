//! L2 networks: one Linux bridge per L2 network, with its uplink enslaved.
//!
//! * `NoVlan` enslaves the given physical interface as it is.
//! * `Vlan` creates the 802.1Q sub-interface `<if>.<id>` and enslaves it. This kernel has no
//!   `CONFIG_VLAN_8021Q`, so the path is covered by unit tests of [`plan`] only.
//! * `Vxlan` creates a VXLAN device with the VNI, the local VTEP and no multicast group; the peer
//!   VTEPs the controllers publish become all-zero FDB entries (head-end replication, as ZStack's
//!   `populatefdb`). Learning stays on so unicast frames go straight to the VTEP that owns the MAC.
//!
//! [`plan`] is pure: it turns a spec into the list of link operations a fresh host needs. Ensuring is
//! "apply the operations whose effect is missing", so re-running it on a configured host changes
//! nothing, and a half-configured host (agent killed mid-way) is completed.

use std::net::Ipv4Addr;

use crate::error::{Error, Result};
use crate::exec::Netns;
use crate::names;

/// Default VXLAN UDP port (IANA).
pub const VXLAN_PORT: u16 = 4789;
/// Overlay MTU on VXLAN: 1500 minus the 50 bytes of outer Ethernet/IP/UDP/VXLAN headers.
pub const VXLAN_MTU: u32 = 1450;

/// How an L2 network reaches other hosts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L2Type {
    /// The bridge is stretched over a physical interface, untagged.
    NoVlan { interface: String },
    /// The bridge is stretched over an 802.1Q sub-interface of a physical interface.
    Vlan { interface: String, vlan_id: u16 },
    /// The bridge is stretched over a VXLAN overlay.
    Vxlan {
        vni: u32,
        /// This host's VTEP address.
        local: Ipv4Addr,
        /// The other hosts' VTEP addresses (this host's own is ignored if present).
        peers: Vec<Ipv4Addr>,
        /// Underlay device (optional; the kernel routes to the peers otherwise).
        underlay: Option<String>,
        /// UDP port; [`VXLAN_PORT`] when `None`.
        port: Option<u16>,
    },
}

/// A resolved L2 network as the host must build it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L2Spec {
    /// The L2Network's name; the bridge name derives from it.
    pub name: String,
    pub kind: L2Type,
    /// MTU for the bridge and uplink; VXLAN defaults to [`VXLAN_MTU`].
    pub mtu: Option<u32>,
}

impl L2Spec {
    /// The bridge this L2 network's taps and L3 namespaces attach to.
    pub fn bridge(&self) -> String {
        names::bridge(&self.name)
    }

    /// The uplink port enslaved to the bridge.
    pub fn uplink(&self) -> String {
        match &self.kind {
            L2Type::NoVlan { interface } => interface.clone(),
            L2Type::Vlan { interface, vlan_id } => names::vlan(interface, *vlan_id),
            L2Type::Vxlan { .. } => names::vxlan(&self.name),
        }
    }

    /// The MTU the bridge gets (`None`: leave the kernel's choice).
    pub fn effective_mtu(&self) -> Option<u32> {
        match (&self.kind, self.mtu) {
            (_, Some(m)) => Some(m),
            (L2Type::Vxlan { .. }, None) => Some(VXLAN_MTU),
            _ => None,
        }
    }
}

/// One link operation, in the words of iproute2.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkOp {
    /// `ip link add NAME type bridge stp_state 0 forward_delay 0`
    AddBridge { name: String },
    /// `ip link add link PARENT name NAME type vlan id ID`
    AddVlan {
        parent: String,
        name: String,
        vlan_id: u16,
    },
    /// `ip link add NAME type vxlan id VNI local LOCAL dstport PORT [dev DEV] learning`
    AddVxlan {
        name: String,
        vni: u32,
        local: Ipv4Addr,
        port: u16,
        underlay: Option<String>,
    },
    /// `ip link set NAME mtu MTU`
    SetMtu { name: String, mtu: u32 },
    /// `ip link set NAME master BRIDGE`
    SetMaster { name: String, master: String },
    /// `ip link set NAME up`
    SetUp { name: String },
    /// `bridge fdb append 00:00:00:00:00:00 dev DEV dst PEER`
    AppendFdb { dev: String, dst: Ipv4Addr },
    /// `bridge fdb del 00:00:00:00:00:00 dev DEV dst PEER`
    DelFdb { dev: String, dst: Ipv4Addr },
}

impl LinkOp {
    /// The command (`ip` or `bridge`) and its arguments.
    pub fn argv(&self) -> (&'static str, Vec<String>) {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        match self {
            LinkOp::AddBridge { name } => (
                "ip",
                s(&[
                    "link",
                    "add",
                    name,
                    "type",
                    "bridge",
                    "stp_state",
                    "0",
                    "forward_delay",
                    "0",
                ]),
            ),
            LinkOp::AddVlan {
                parent,
                name,
                vlan_id,
            } => (
                "ip",
                s(&[
                    "link",
                    "add",
                    "link",
                    parent,
                    "name",
                    name,
                    "type",
                    "vlan",
                    "id",
                    &vlan_id.to_string(),
                ]),
            ),
            LinkOp::AddVxlan {
                name,
                vni,
                local,
                port,
                underlay,
            } => {
                let mut v = s(&[
                    "link",
                    "add",
                    name,
                    "type",
                    "vxlan",
                    "id",
                    &vni.to_string(),
                    "local",
                    &local.to_string(),
                    "dstport",
                    &port.to_string(),
                ]);
                if let Some(dev) = underlay {
                    v.extend(s(&["dev", dev]));
                }
                v.extend(s(&["learning", "noproxy", "nol2miss", "nol3miss"]));
                ("ip", v)
            }
            LinkOp::SetMtu { name, mtu } => {
                ("ip", s(&["link", "set", name, "mtu", &mtu.to_string()]))
            }
            LinkOp::SetMaster { name, master } => {
                ("ip", s(&["link", "set", name, "master", master]))
            }
            LinkOp::SetUp { name } => ("ip", s(&["link", "set", name, "up"])),
            LinkOp::AppendFdb { dev, dst } => (
                "bridge",
                s(&[
                    "fdb",
                    "append",
                    "00:00:00:00:00:00",
                    "dev",
                    dev,
                    "dst",
                    &dst.to_string(),
                ]),
            ),
            LinkOp::DelFdb { dev, dst } => (
                "bridge",
                s(&[
                    "fdb",
                    "del",
                    "00:00:00:00:00:00",
                    "dev",
                    dev,
                    "dst",
                    &dst.to_string(),
                ]),
            ),
        }
    }

    fn apply(&self, ns: &Netns) -> Result<()> {
        let (program, args) = self.argv();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match program {
            "bridge" => ns.bridge(&args)?,
            _ => ns.ip(&args)?,
        };
        Ok(())
    }
}

/// The operations that build `spec` on a host that has none of it, in order.
pub fn plan(spec: &L2Spec) -> Vec<LinkOp> {
    let bridge = spec.bridge();
    let uplink = spec.uplink();
    let mtu = spec.effective_mtu();
    let mut ops = vec![LinkOp::AddBridge {
        name: bridge.clone(),
    }];
    match &spec.kind {
        L2Type::NoVlan { .. } => {}
        L2Type::Vlan { interface, vlan_id } => ops.push(LinkOp::AddVlan {
            parent: interface.clone(),
            name: uplink.clone(),
            vlan_id: *vlan_id,
        }),
        L2Type::Vxlan {
            vni,
            local,
            underlay,
            port,
            ..
        } => ops.push(LinkOp::AddVxlan {
            name: uplink.clone(),
            vni: *vni,
            local: *local,
            port: port.unwrap_or(VXLAN_PORT),
            underlay: underlay.clone(),
        }),
    }
    if let Some(mtu) = mtu {
        ops.push(LinkOp::SetMtu {
            name: uplink.clone(),
            mtu,
        });
        ops.push(LinkOp::SetMtu {
            name: bridge.clone(),
            mtu,
        });
    }
    ops.push(LinkOp::SetMaster {
        name: uplink.clone(),
        master: bridge.clone(),
    });
    ops.push(LinkOp::SetUp {
        name: uplink.clone(),
    });
    ops.push(LinkOp::SetUp { name: bridge });
    if let L2Type::Vxlan { peers, local, .. } = &spec.kind {
        for p in peers.iter().filter(|p| *p != local) {
            ops.push(LinkOp::AppendFdb {
                dev: uplink.clone(),
                dst: *p,
            });
        }
    }
    ops
}

/// Makes the host match `spec`: creates what is missing, fixes masters/MTU/up state, and makes the
/// VXLAN flood list exactly the peer set (removing VTEPs of hosts that left).
pub fn ensure(ns: &Netns, spec: &L2Spec) -> Result<()> {
    let links = ns.links()?;
    let find = |n: &str| links.iter().find(|l| l.name == n).cloned();
    let uplink = spec.uplink();
    // Enslaving an interface moves its traffic into the bridge: one that carries addresses (the
    // host's management interface, say) would cut the host off. NoVlan needs a dedicated one.
    if let L2Type::NoVlan { interface } = &spec.kind {
        let Some(link) = find(interface) else {
            return Err(Error::Invalid(format!(
                "interface {interface} of L2 network {} does not exist",
                spec.name
            )));
        };
        if link.master.as_deref() != Some(spec.bridge().as_str())
            && !crate::l3::addresses(ns, interface)?.is_empty()
        {
            return Err(Error::Invalid(format!(
                "interface {interface} of L2 network {} has IPv4 addresses; a NoVlan network needs a dedicated interface",
                spec.name
            )));
        }
    }
    // A VXLAN device with the wrong VNI (the L2 was recreated with another VNI) is rebuilt.
    if let (L2Type::Vxlan { vni, .. }, Some(l)) = (&spec.kind, find(&uplink)) {
        if l.vxlan_id != Some(*vni) {
            ns.ip(&["link", "del", &uplink])?;
        }
    }
    let links = ns.links()?;
    let find = |n: &str| links.iter().find(|l| l.name == n).cloned();
    for op in plan(spec) {
        let needed = match &op {
            LinkOp::AddBridge { name }
            | LinkOp::AddVlan { name, .. }
            | LinkOp::AddVxlan { name, .. } => find(name).is_none(),
            LinkOp::SetMtu { name, mtu } => find(name).and_then(|l| l.mtu) != Some(*mtu),
            LinkOp::SetMaster { name, master } => {
                find(name).and_then(|l| l.master).as_deref() != Some(master)
            }
            LinkOp::SetUp { name } => !find(name).is_some_and(|l| l.up),
            // The flood list is reconciled below.
            LinkOp::AppendFdb { .. } | LinkOp::DelFdb { .. } => false,
        };
        if needed {
            op.apply(ns)?;
        }
    }
    if let L2Type::Vxlan { peers, local, .. } = &spec.kind {
        let want: Vec<Ipv4Addr> = peers.iter().filter(|p| *p != local).copied().collect();
        let have = flood_list(ns, &uplink)?;
        for p in want.iter().filter(|p| !have.contains(p)) {
            LinkOp::AppendFdb {
                dev: uplink.clone(),
                dst: *p,
            }
            .apply(ns)?;
        }
        for p in have.iter().filter(|p| !want.contains(p)) {
            LinkOp::DelFdb {
                dev: uplink.clone(),
                dst: *p,
            }
            .apply(ns)?;
        }
    }
    Ok(())
}

/// The VTEPs in a VXLAN device's all-zero (flood) FDB entries.
pub fn flood_list(ns: &Netns, dev: &str) -> Result<Vec<Ipv4Addr>> {
    let out = ns.bridge(&["-j", "fdb", "show", "dev", dev])?;
    let v: serde_json::Value =
        serde_json::from_str(&out).map_err(|source| crate::Error::Parse {
            command: format!("bridge -j fdb show dev {dev}"),
            source,
        })?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["mac"].as_str() == Some("00:00:00:00:00:00"))
        .filter_map(|e| e["dst"].as_str().and_then(|d| d.parse().ok()))
        .collect())
}

/// Removes the L2 network's bridge and the devices Strata created for it (a physical `NoVlan`
/// interface is only released from the bridge, never deleted).
pub fn remove(ns: &Netns, spec: &L2Spec) -> Result<()> {
    let links = ns.links()?;
    let exists = |n: &str| links.iter().any(|l| l.name == n);
    match &spec.kind {
        L2Type::NoVlan { interface } => {
            if exists(interface) {
                ns.ip(&["link", "set", interface, "nomaster"])?;
            }
        }
        L2Type::Vlan { .. } | L2Type::Vxlan { .. } => {
            let uplink = spec.uplink();
            if exists(&uplink) {
                ns.ip(&["link", "del", &uplink])?;
            }
        }
    }
    remove_bridge(ns, &spec.bridge())
}

/// Deletes a Strata bridge by name (for orphans whose spec is gone), with any VXLAN device on it.
pub fn remove_bridge(ns: &Netns, bridge: &str) -> Result<()> {
    let links = ns.links()?;
    for l in &links {
        if l.master.as_deref() == Some(bridge)
            && (l.name.starts_with(names::VXLAN_PREFIX) || l.name.starts_with(names::VLAN_PREFIX))
        {
            ns.ip(&["link", "del", &l.name])?;
        }
    }
    if links.iter().any(|l| l.name == bridge) {
        ns.ip(&["link", "del", bridge])?;
    }
    Ok(())
}

/// Bridges with Strata's prefix in this namespace.
pub fn list_bridges(ns: &Netns) -> Result<Vec<String>> {
    Ok(ns
        .links()?
        .into_iter()
        .filter(|l| l.name.starts_with(names::BRIDGE_PREFIX) && l.kind.as_deref() == Some("bridge"))
        .map(|l| l.name)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmds(spec: &L2Spec) -> Vec<String> {
        plan(spec)
            .iter()
            .map(|op| {
                let (p, a) = op.argv();
                format!("{p} {}", a.join(" "))
            })
            .collect()
    }

    #[test]
    fn vlan_creates_the_subinterface_and_enslaves_it() {
        let spec = L2Spec {
            name: "l2-vlan".into(),
            kind: L2Type::Vlan {
                interface: "eth1".into(),
                vlan_id: 100,
            },
            mtu: None,
        };
        let br = names::bridge("l2-vlan");
        assert_eq!(
            cmds(&spec),
            vec![
                format!("ip link add {br} type bridge stp_state 0 forward_delay 0"),
                "ip link add link eth1 name eth1.100 type vlan id 100".to_string(),
                format!("ip link set eth1.100 master {br}"),
                "ip link set eth1.100 up".to_string(),
                format!("ip link set {br} up"),
            ]
        );
    }

    #[test]
    fn vlan_with_mtu_and_long_parent_name() {
        let spec = L2Spec {
            name: "l2-vlan".into(),
            kind: L2Type::Vlan {
                interface: "enp0s31f6abcd".into(),
                vlan_id: 4094,
            },
            mtu: Some(9000),
        };
        let ops = plan(&spec);
        let sub = names::vlan("enp0s31f6abcd", 4094);
        assert!(sub.starts_with(names::VLAN_PREFIX));
        assert_eq!(
            ops[1],
            LinkOp::AddVlan {
                parent: "enp0s31f6abcd".into(),
                name: sub.clone(),
                vlan_id: 4094
            }
        );
        assert!(ops.contains(&LinkOp::SetMtu {
            name: sub.clone(),
            mtu: 9000
        }));
        assert!(ops.contains(&LinkOp::SetMtu {
            name: names::bridge("l2-vlan"),
            mtu: 9000
        }));
        assert!(ops.contains(&LinkOp::SetMaster {
            name: sub,
            master: names::bridge("l2-vlan")
        }));
    }

    #[test]
    fn novlan_enslaves_the_interface_as_is() {
        let spec = L2Spec {
            name: "flat".into(),
            kind: L2Type::NoVlan {
                interface: "eth1".into(),
            },
            mtu: None,
        };
        let br = names::bridge("flat");
        assert_eq!(
            cmds(&spec),
            vec![
                format!("ip link add {br} type bridge stp_state 0 forward_delay 0"),
                format!("ip link set eth1 master {br}"),
                "ip link set eth1 up".to_string(),
                format!("ip link set {br} up"),
            ]
        );
    }

    #[test]
    fn vxlan_has_vni_vtep_peers_and_overlay_mtu() {
        let spec = L2Spec {
            name: "vx".into(),
            kind: L2Type::Vxlan {
                vni: 5001,
                local: "10.0.0.1".parse().unwrap(),
                peers: vec!["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()],
                underlay: Some("eth0".into()),
                port: None,
            },
            mtu: None,
        };
        let vx = names::vxlan("vx");
        let c = cmds(&spec);
        assert_eq!(
            c[1],
            format!("ip link add {vx} type vxlan id 5001 local 10.0.0.1 dstport 4789 dev eth0 learning noproxy nol2miss nol3miss")
        );
        assert!(c.contains(&format!("ip link set {vx} mtu 1450")));
        // Our own VTEP is never a flood target.
        assert_eq!(
            c.last().unwrap(),
            &format!("bridge fdb append 00:00:00:00:00:00 dev {vx} dst 10.0.0.2")
        );
        assert_eq!(c.iter().filter(|c| c.starts_with("bridge")).count(), 1);
    }
}
