//! Host networking for the instances assigned to this host, with the `strata-network` driver.
//!
//! The agent only executes (ZStack's rule): everything comes resolved in the instances' NICs — the
//! L2 network's type, interface, VLAN id, VNI and MTU; the L3's subnet, gateway and DNS; the NIC's
//! MAC and IP; the VM's user data. [`desired`] turns the instances into the host's networks (pure,
//! unit-tested); [`HostNetwork::sync`] makes the host match them and removes what no longer belongs
//! (L3 namespaces and bridges of networks no instance here uses any more), which also cleans up
//! after a crash. It is level-triggered: `run` re-syncs from the instance store periodically, so a
//! restart or a missed event converges on the next pass.
//!
//! A VXLAN network's peers are the tunnel endpoints the L2Network controller publishes
//! (`L2Network.status.vteps`: the management addresses of the hosts of its clusters), read from
//! a watch of L2 networks, plus any static peers in the agent's configuration; this host's own
//! VTEP address comes from the configuration. Peers that appear or leave are applied on the next
//! resync.
//!
//! EIPs and port forwardings come resolved in each NIC (`VmiNic.eip`, `VmiNic.portForwardings`,
//! with the Public L3's prefix, gateway and L2): the public L2's bridge is built like any other,
//! and each private L3 with either gets the driver's NAT (a veth from its namespace into the
//! public bridge, 1:1 DNAT/SNAT for an EIP, DNAT of ports for a port forwarding). A private L3
//! reaches one public network; a VIP on another is reported as a problem. What was programmed is
//! returned by [`HostNetwork::plug`] for the instance's status. NAT the agent applied and no
//! instance wants any more is removed; after an agent restart, leftover NAT goes with its L3
//! namespace.
//!
//! Security groups come resolved in each NIC (`VmiNic.security`): [`nic_security`] translates them
//! into the driver's per-tap table, applied on every sync (so before the domain plugs its tap) and
//! removed by the orphan sweep once no instance here has the NIC. A NIC whose rules cannot be
//! translated gets a closed firewall (everything dropped) rather than none.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::{reflector, reflector::Store, watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use strata_apis::{
    securitygroup::{Protocol as ApiProtocol, RuleAction},
    ForwardedProtocol, L2Network, L2NetworkType, VirtualMachineInstance, VmiEip, VmiNatStatus,
    VmiNic, VmiPortForwarding, VmiSecurityRule,
};
use strata_network::{
    names, Action, Eip, InstanceMetadata, L2Spec, L2Type, L3Spec, Lease, MetadataServer, NatSpec,
    NetworkDriver, NicSecurity, PfProtocol, PortForward, Protocol, PublicUplink, SgRule,
};
use tracing::{info, warn};

/// The agent's network settings.
#[derive(Clone, Debug, Default)]
pub struct NetworkConfig {
    pub driver: strata_network::DriverConfig,
    /// This host's VTEP address (required for VXLAN networks).
    pub vtep: Option<Ipv4Addr>,
    /// VTEPs to tunnel to besides the ones the control plane publishes (hosts it does not know).
    pub vtep_peers: Vec<Ipv4Addr>,
    /// The underlay device VXLAN traffic leaves through (optional).
    pub vxlan_underlay: Option<String>,
    /// Serve the metadata service (binding 169.254.169.254:80 in each L3 namespace).
    pub metadata: bool,
}

/// What this host's networking must look like.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostNetworks {
    /// By L2 name.
    pub l2: BTreeMap<String, L2Spec>,
    /// By L3 name, with the leases of this host's NICs.
    pub l3: BTreeMap<String, L3Spec>,
    /// By L3 name: what the metadata service answers to each NIC address.
    pub metadata: BTreeMap<String, HashMap<Ipv4Addr, InstanceMetadata>>,
    /// By tap: the firewall of each NIC in a security group.
    pub security: BTreeMap<String, NicSecurity>,
    /// By private L3 name: the EIPs and port forwardings NATed from its namespace.
    pub nat: BTreeMap<String, NatSpec>,
    /// By instance (`namespace/name`): its planned NAT, with the private L3 it is on.
    pub nat_of: BTreeMap<String, Vec<(String, VmiNatStatus)>>,
    /// NICs that could not be planned, with why (reported, the rest goes ahead).
    pub problems: Vec<String>,
}

/// The tap of an instance's NIC, as the hypervisor driver must name it (libvirt `<target dev>`),
/// so security-group rules can name it before the domain exists.
pub fn tap(vmi: &VirtualMachineInstance, index: usize) -> String {
    let key = format!("{}/{}", vmi.namespace().unwrap_or_default(), vmi.name_any());
    names::tap(&key, u32::try_from(index).unwrap_or(u32::MAX))
}

/// The bridge an instance's NIC plugs into.
pub fn bridge(nic: &VmiNic) -> String {
    names::bridge(&nic.l2.name)
}

/// The tunnel endpoints the control plane publishes, by L2 network name.
pub type PublishedVteps = BTreeMap<String, Vec<Ipv4Addr>>;

/// Reads `status.vteps` of the VXLAN networks (an address that does not parse is skipped: the
/// controller writes only addresses, so it would be a hand edit).
pub fn published_vteps(l2s: &[Arc<L2Network>]) -> PublishedVteps {
    l2s.iter()
        .filter_map(|l2| {
            let vteps = &l2.status.as_ref()?.vteps;
            let peers = vteps.iter().filter_map(|v| v.parse().ok()).collect();
            Some((l2.name_any(), peers))
        })
        .collect()
}

/// Watches every L2 network for its published tunnel endpoints, for [`HostNetwork::attach`].
pub fn watch_l2_networks(client: &Client) -> Store<L2Network> {
    let (store, writer) = reflector::store();
    let l2s = Api::<L2Network>::all(client.clone());
    tokio::spawn(
        watcher(l2s, watcher::Config::default())
            .default_backoff()
            .reflect(writer)
            .for_each(|event| {
                if let Err(error) = event {
                    warn!(error = %error, "L2 network watch failed");
                }
                futures::future::ready(())
            }),
    );
    store
}

fn l2_spec(
    nic: &VmiNic,
    cfg: &NetworkConfig,
    published: &PublishedVteps,
) -> Result<L2Spec, String> {
    let l2 = &nic.l2;
    if l2.name.is_empty() {
        return Err("the NIC's L2 network is not resolved yet".into());
    }
    let interface = || {
        l2.physical_interface
            .clone()
            .ok_or_else(|| format!("L2 network {} has no physical interface", l2.name))
    };
    let kind = match l2.network_type {
        L2NetworkType::NoVlan => L2Type::NoVlan {
            interface: interface()?,
        },
        L2NetworkType::Vlan => L2Type::Vlan {
            interface: interface()?,
            vlan_id: l2
                .vlan_id
                .and_then(|v| u16::try_from(v).ok())
                .filter(|v| (1..=4094).contains(v))
                .ok_or_else(|| format!("L2 network {} has no valid VLAN id", l2.name))?,
        },
        L2NetworkType::Vxlan => L2Type::Vxlan {
            vni: l2
                .vni
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| format!("L2 network {} has no VNI", l2.name))?,
            local: cfg.vtep.ok_or_else(|| {
                format!(
                    "L2 network {} is VXLAN but this host has no VTEP address",
                    l2.name
                )
            })?,
            peers: {
                let mut peers = cfg.vtep_peers.clone();
                peers.extend(published.get(&l2.name).into_iter().flatten());
                peers.sort_unstable();
                peers.dedup();
                peers
            },
            underlay: cfg.vxlan_underlay.clone(),
            port: None,
        },
    };
    Ok(L2Spec {
        name: l2.name.clone(),
        kind,
        mtu: l2.mtu.and_then(|m| u32::try_from(m).ok()),
    })
}

fn l3_spec(nic: &VmiNic, l2: &L2Spec) -> Result<L3Spec, String> {
    let ip: Ipv4Addr = nic
        .ip
        .parse()
        .map_err(|_| format!("NIC address {:?} is not IPv4", nic.ip))?;
    let gateway: Ipv4Addr = nic
        .gateway
        .parse()
        .map_err(|_| format!("gateway {:?} is not IPv4", nic.gateway))?;
    let cidr = ipnet_of(ip, nic.prefix_length)?;
    Ok(L3Spec {
        name: nic.l3_network.clone(),
        bridge: l2.bridge(),
        cidr,
        gateway,
        dns: nic.dns.iter().filter_map(|d| d.parse().ok()).collect(),
        domain: nic.dns_domain.clone(),
        mtu: l2.effective_mtu(),
        local_only: true,
        leases: vec![],
    })
}

fn action(a: RuleAction) -> Action {
    match a {
        RuleAction::Accept => Action::Accept,
        RuleAction::Drop => Action::Drop,
    }
}

fn sg_rule(r: &VmiSecurityRule) -> Result<SgRule, String> {
    let cidr = match &r.cidr {
        None => None,
        Some(c) => Some(
            c.parse::<ipnet::Ipv4Net>()
                .or_else(|_| c.parse::<Ipv4Addr>().map(ipnet::Ipv4Net::from))
                .map_err(|_| format!("security rule CIDR {c:?} is not IPv4"))?,
        ),
    };
    let ports = match r.ports {
        Some(p) if p.start == 0 || p.start > p.end => {
            return Err(format!(
                "security rule ports {}-{} are invalid",
                p.start, p.end
            ))
        }
        p => p.map(|p| (p.start, p.end)),
    };
    Ok(SgRule {
        priority: r.priority,
        protocol: match r.protocol {
            ApiProtocol::TCP => Protocol::Tcp,
            ApiProtocol::UDP => Protocol::Udp,
            ApiProtocol::ICMP => Protocol::Icmp,
            ApiProtocol::ALL => Protocol::All,
        },
        ports,
        cidr: cidr.map(|c| c.trunc()),
        action: action(r.action),
    })
}

/// The driver's firewall for the NIC on `tap` (pure): `None` when the NIC is in no security group.
/// Anti-spoofing uses the NIC's MAC and address.
pub fn nic_security(tap: &str, nic: &VmiNic) -> Result<Option<NicSecurity>, String> {
    let Some(sec) = &nic.security else {
        return Ok(None);
    };
    let rules =
        |rules: &[VmiSecurityRule]| rules.iter().map(sg_rule).collect::<Result<Vec<_>, _>>();
    Ok(Some(NicSecurity {
        tap: tap.to_string(),
        mac: Some(nic.mac.to_ascii_lowercase()).filter(|m| !m.is_empty()),
        ip: nic.ip.parse().ok(),
        ingress: rules(&sec.ingress_rules)?,
        egress: rules(&sec.egress_rules)?,
        default_ingress: action(sec.default_ingress_policy),
        default_egress: action(sec.default_egress_policy),
    }))
}

/// The rules of a port forwarding to `private_ip` (pure).
fn port_forward(
    pf: &VmiPortForwarding,
    vip: Ipv4Addr,
    private_ip: Ipv4Addr,
) -> Result<PortForward, String> {
    let allowed_cidr = match &pf.allowed_cidr {
        Some(c) => Some(
            c.parse::<ipnet::Ipv4Net>()
                .map_err(|_| format!("allowed CIDR {c:?} is not IPv4"))?
                .trunc(),
        ),
        None => None,
    };
    Ok(PortForward {
        vip,
        protocol: match pf.protocol {
            ForwardedProtocol::TCP => PfProtocol::Tcp,
            ForwardedProtocol::UDP => PfProtocol::Udp,
        },
        external: (pf.external_ports.start, pf.external_ports.end),
        private_ip,
        internal: (pf.internal_ports.start, pf.internal_ports.end),
        allowed_cidr,
    })
}

/// Plans the public side of a VIP for the private L3 `l3` (its public L2, and the L3's NAT
/// through it) and returns the L3's NAT and the VIP. A private L3 reaches one public network.
fn nat_entry<'a>(
    out: &'a mut HostNetworks,
    l3: &str,
    public: &VmiEip,
    cfg: &NetworkConfig,
    published: &PublishedVteps,
) -> Result<(&'a mut NatSpec, Ipv4Addr), String> {
    let (public_l2, uplink, vip) = eip_plan(public, cfg, published)?;
    if let Some(nat) = out.nat.get(l3) {
        if nat.public.bridge != uplink.bridge {
            return Err(format!(
                "VIP {vip} is on L3 network {}, but L3 network {l3} already reaches another public network here",
                public.l3_network
            ));
        }
    }
    out.l2.entry(public_l2.name.clone()).or_insert(public_l2);
    let nat = out.nat.entry(l3.to_string()).or_insert_with(|| NatSpec {
        l3: l3.to_string(),
        public: uplink,
        eips: vec![],
        port_forwards: vec![],
    });
    Ok((nat, vip))
}

/// The public L2 a VIP needs, its uplink and the VIP (pure).
fn eip_plan(
    eip: &VmiEip,
    cfg: &NetworkConfig,
    published: &PublishedVteps,
) -> Result<(L2Spec, PublicUplink, Ipv4Addr), String> {
    let l2 = l2_spec(
        &VmiNic {
            l2: eip.l2.clone(),
            ..VmiNic::default()
        },
        cfg,
        published,
    )?;
    let vip: Ipv4Addr = eip
        .vip
        .parse()
        .map_err(|_| format!("VIP {:?} is not IPv4", eip.vip))?;
    let gateway = match &eip.gateway {
        Some(g) => Some(
            g.parse()
                .map_err(|_| format!("gateway {g:?} is not IPv4"))?,
        ),
        None => None,
    };
    let uplink = PublicUplink {
        bridge: l2.bridge(),
        cidr: ipnet_of(vip, eip.prefix_length)?,
        gateway,
    };
    Ok((l2, uplink, vip))
}

fn ipnet_of(ip: Ipv4Addr, prefix: u8) -> Result<ipnet::Ipv4Net, String> {
    ipnet::Ipv4Net::new(ip, prefix)
        .map(|n| n.trunc())
        .map_err(|_| format!("prefix length {prefix} is invalid"))
}

/// The networks the given instances need on this host (pure).
pub fn desired(
    vmis: &[Arc<VirtualMachineInstance>],
    cfg: &NetworkConfig,
    published: &PublishedVteps,
) -> HostNetworks {
    let mut out = HostNetworks::default();
    let mut vmis: Vec<&Arc<VirtualMachineInstance>> = vmis.iter().collect();
    // Deterministic: the first instance by name defines an L2/L3 shared by several.
    vmis.sort_by_key(|v| (v.namespace(), v.name_any()));
    for vmi in vmis {
        if vmi.metadata.deletion_timestamp.is_some() {
            continue;
        }
        for (index, nic) in vmi.spec.nics.iter().enumerate() {
            let who = format!(
                "{}/{} NIC {}",
                vmi.namespace().unwrap_or_default(),
                vmi.name_any(),
                nic.mac
            );
            let tap = tap(vmi, index);
            match nic_security(&tap, nic) {
                Ok(Some(sec)) => {
                    out.security.insert(tap, sec);
                }
                Ok(None) => {}
                Err(e) => {
                    // Closed rather than open: the NIC's groups meant to restrict it.
                    out.problems
                        .push(format!("{who}: {e}; all its traffic is dropped"));
                    let mut closed = NicSecurity::new(&tap);
                    closed.default_egress = Action::Drop;
                    out.security.insert(tap, closed);
                }
            }
            let planned =
                l2_spec(nic, cfg, published).and_then(|l2| l3_spec(nic, &l2).map(|l3| (l2, l3)));
            let (l2, l3) = match planned {
                Ok(p) => p,
                Err(e) => {
                    out.problems.push(format!("{who}: {e}"));
                    continue;
                }
            };
            let ip: Ipv4Addr = nic.ip.parse().unwrap_or(Ipv4Addr::UNSPECIFIED);
            let instance = format!("{}/{}", vmi.namespace().unwrap_or_default(), vmi.name_any());
            let vips = nic
                .eip
                .iter()
                .map(|e| (e, None))
                .chain(nic.port_forwardings.iter().map(|pf| (&pf.public, Some(pf))));
            for (public, pf) in vips {
                let kind = if pf.is_some() {
                    "PortForwarding"
                } else {
                    "Eip"
                };
                let planned =
                    nat_entry(&mut out, &l3.name, public, cfg, published).and_then(|(nat, vip)| {
                        match pf {
                            None => nat.eips.push(Eip {
                                vip,
                                private_ip: ip,
                            }),
                            Some(pf) => nat.port_forwards.push(port_forward(pf, vip, ip)?),
                        }
                        Ok(())
                    });
                match planned {
                    Ok(()) => out.nat_of.entry(instance.clone()).or_default().push((
                        l3.name.clone(),
                        VmiNatStatus {
                            kind: kind.into(),
                            name: public.name.clone(),
                            vip: public.vip.clone(),
                        },
                    )),
                    Err(e) => out
                        .problems
                        .push(format!("{who}: {kind} {}: {e}", public.name)),
                }
            }
            out.l2.entry(l2.name.clone()).or_insert(l2);
            let entry = out.l3.entry(l3.name.clone()).or_insert(l3);
            entry.leases.push(Lease {
                mac: nic.mac.to_ascii_lowercase(),
                ip,
                hostname: Some(vmi.name_any()),
            });
            out.metadata
                .entry(nic.l3_network.clone())
                .or_default()
                .insert(
                    ip,
                    InstanceMetadata {
                        user_data: vmi.spec.user_data.clone().unwrap_or_default(),
                        hostname: Some(vmi.name_any()),
                        instance_id: vmi.uid(),
                    },
                );
        }
    }
    out
}

/// The network side of the agent.
pub struct HostNetwork {
    driver: NetworkDriver,
    config: NetworkConfig,
    metadata: Mutex<HashMap<String, MetadataServer>>,
    /// The agent's instance store, once attached: the full view a sync needs (an L3's hosts
    /// file holds every lease on this host, not just the instance being reconciled).
    store: Mutex<Option<Store<VirtualMachineInstance>>>,
    /// The instances moving here by live migration, once attached: their networks are built
    /// before they arrive and kept until they are this host's.
    incoming: Mutex<Option<Store<VirtualMachineInstance>>>,
    /// Every L2 network, for the VXLAN peers the control plane publishes.
    l2_networks: Mutex<Option<Store<L2Network>>>,
    /// One sync at a time: an orphan sweep must not race an ensure. Holds the NAT applied, by
    /// private L3, with its public bridge (to remove it once no instance wants it).
    syncing: tokio::sync::Mutex<BTreeMap<String, String>>,
}

impl std::fmt::Debug for HostNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostNetwork")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The outcome of a sync.
#[derive(Clone, Debug, Default)]
pub struct Synced {
    pub want: HostNetworks,
    /// L3 networks that are up on this host (their NICs can be plugged).
    pub ready_l3: Vec<String>,
    /// Private L3 networks whose planned NAT was programmed by this sync.
    pub nat_ready: Vec<String>,
}

impl HostNetwork {
    pub fn new(config: NetworkConfig) -> Self {
        HostNetwork {
            driver: NetworkDriver::new(config.driver.clone()),
            config,
            metadata: Mutex::default(),
            store: Mutex::default(),
            incoming: Mutex::default(),
            l2_networks: Mutex::default(),
            syncing: tokio::sync::Mutex::default(),
        }
    }

    /// The driver (names of namespaces, inventory).
    pub fn driver(&self) -> &NetworkDriver {
        &self.driver
    }

    /// This host's VTEP address, if it has one.
    pub fn vtep(&self) -> Option<Ipv4Addr> {
        self.config.vtep
    }

    /// Gives the network the agent's instance store (the instances assigned to this host).
    pub fn attach(&self, store: Store<VirtualMachineInstance>) {
        *self.store.lock().unwrap_or_else(|e| e.into_inner()) = Some(store);
    }

    /// Gives the network the store of the instances moving to this host by live migration.
    pub fn attach_incoming(&self, store: Store<VirtualMachineInstance>) {
        *self.incoming.lock().unwrap_or_else(|e| e.into_inner()) = Some(store);
    }

    /// Gives the network a store of every L2 network ([`watch_l2_networks`]), for the VXLAN
    /// peers the control plane publishes.
    pub fn attach_l2_networks(&self, l2_networks: Store<L2Network>) {
        *self.l2_networks.lock().unwrap_or_else(|e| e.into_inner()) = Some(l2_networks);
    }

    fn published_vteps(&self) -> PublishedVteps {
        let l2s = self.l2_networks.lock().unwrap_or_else(|e| e.into_inner());
        l2s.as_ref()
            .map(|store| published_vteps(&store.state()))
            .unwrap_or_default()
    }

    fn store(&self) -> Option<Store<VirtualMachineInstance>> {
        self.store.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// `vmis` and the instances moving here that are not among them.
    fn with_incoming(
        &self,
        vmis: &[Arc<VirtualMachineInstance>],
    ) -> Vec<Arc<VirtualMachineInstance>> {
        let incoming = self
            .incoming
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut all = vmis.to_vec();
        for vmi in incoming.map(|s| s.state()).unwrap_or_default() {
            if !all.iter().any(|v| v.metadata.uid == vmi.metadata.uid) {
                all.push(vmi);
            }
        }
        all
    }

    /// Makes the host's networks match the instances (and those moving here) and removes the
    /// rest. Errors are logged per network so that one broken network does not hold back the
    /// others.
    pub async fn sync(&self, vmis: &[Arc<VirtualMachineInstance>]) -> Synced {
        let vmis = self.with_incoming(vmis);
        let mut nat_applied = self.syncing.lock().await;
        let want = desired(&vmis, &self.config, &self.published_vteps());
        for p in &want.problems {
            warn!(problem = %p, "cannot plan a NIC's network");
        }
        let driver = self.driver.clone();
        let plan = want.clone();
        let previous = nat_applied.clone();
        let owned = OwnedBridges(self.config.driver.state_dir.join("bridges"));
        // The driver runs short commands synchronously.
        let (ready_l3, (nat, nat_ready)) = tokio::task::spawn_blocking(move || {
            let ready = apply(&driver, &plan, &owned);
            let nat = apply_nat(&driver, &plan, &ready, &previous);
            (ready, nat)
        })
        .await
        .unwrap_or_else(|_| (Vec::new(), (nat_applied.clone(), Vec::new())));
        *nat_applied = nat;
        if self.config.metadata {
            self.sync_metadata(&want, &ready_l3);
        }
        Synced {
            want,
            ready_l3,
            nat_ready,
        }
    }

    /// Before a domain starts: builds the networks of `vmi`'s NICs (with every lease of this host,
    /// from the attached store) and names each NIC's bridge and tap. A NIC whose network could not
    /// be built is left unplugged (the domain boots without it and the next resync plugs it).
    /// Returns the instance's Eips and port forwardings whose NAT is programmed.
    pub async fn plug(
        &self,
        vmi: &VirtualMachineInstance,
        nics: &mut [crate::DomainNic],
    ) -> Vec<VmiNatStatus> {
        let mut vmis = match self.store() {
            Some(store) => {
                let _ = store.wait_until_ready().await;
                store.state()
            }
            None => vec![],
        };
        vmis.retain(|v| v.metadata.uid != vmi.metadata.uid || vmi.metadata.uid.is_none());
        vmis.push(Arc::new(vmi.clone()));
        let mut synced = self.sync(&vmis).await;
        for (i, nic) in nics.iter_mut().enumerate() {
            if synced.ready_l3.contains(&nic.spec.l3_network) {
                nic.bridge = Some(bridge(&nic.spec));
                nic.tap = Some(tap(vmi, i));
            }
        }
        let instance = format!("{}/{}", vmi.namespace().unwrap_or_default(), vmi.name_any());
        let mut programmed: Vec<VmiNatStatus> = synced
            .want
            .nat_of
            .remove(&instance)
            .unwrap_or_default()
            .into_iter()
            .filter(|(l3, _)| synced.nat_ready.contains(l3))
            .map(|(_, nat)| nat)
            .collect();
        programmed.sort();
        programmed
    }

    fn sync_metadata(&self, want: &HostNetworks, ready_l3: &[String]) {
        let mut servers = self.metadata.lock().unwrap_or_else(|e| e.into_inner());
        servers.retain(|l3, s| want.l3.contains_key(l3) && s.is_current());
        for l3 in ready_l3 {
            if !servers.contains_key(l3) {
                match MetadataServer::start(&self.driver.l3_netns(l3)) {
                    Ok(s) => {
                        servers.insert(l3.clone(), s);
                    }
                    Err(e) => warn!(l3 = %l3, error = %e, "cannot start the metadata service"),
                }
            }
            if let (Some(s), Some(md)) = (servers.get(l3), want.metadata.get(l3)) {
                s.set_all(md.clone());
            }
        }
    }

    /// Re-syncs from the attached store every `period` (level-triggered: leases of deleted
    /// instances go, orphans left by a crash are removed).
    pub async fn run(self: Arc<Self>, period: Duration) {
        let Some(store) = self.store() else { return };
        // kube-runtime's store wakes only one of the tasks waiting for its first list, and the
        // instance controller waits on the same store: ask again each period instead. (Syncing
        // from a store not yet filled would sweep away every network as an orphan.)
        loop {
            match tokio::time::timeout(period, store.wait_until_ready()).await {
                Ok(Ok(())) => break,
                Ok(Err(_)) => return,
                Err(_) => continue,
            }
        }
        loop {
            self.sync(&store.state()).await;
            tokio::time::sleep(period).await;
        }
    }
}

/// Ensures the planned NAT of the L3 networks that are up (and whose public bridge is), removes NAT
/// applied before and no longer planned; returns the NAT now applied (private L3 → public bridge)
/// and the L3 networks whose NAT this call programmed.
fn apply_nat(
    driver: &NetworkDriver,
    want: &HostNetworks,
    ready_l3: &[String],
    previous: &BTreeMap<String, String>,
) -> (BTreeMap<String, String>, Vec<String>) {
    let mut applied = BTreeMap::new();
    for (l3, nat) in &want.nat {
        if !ready_l3.contains(l3) {
            continue;
        }
        match driver.ensure_nat(nat) {
            Ok(()) => {
                applied.insert(l3.clone(), nat.public.bridge.clone());
            }
            Err(e) => warn!(l3 = %l3, error = %e, "failed to program the L3 network's NAT"),
        }
    }
    let programmed = applied.keys().cloned().collect();
    for (l3, bridge) in previous {
        let wanted = want.nat.get(l3).map(|n| &n.public.bridge) == Some(bridge);
        if wanted && !applied.contains_key(l3) {
            // Failed this time: still ours to retry or remove.
            applied.insert(l3.clone(), bridge.clone());
        } else if !wanted {
            match driver.remove_nat(l3, bridge) {
                Ok(()) => info!(l3 = %l3, "removed NAT no instance here wants"),
                Err(e) => warn!(l3 = %l3, error = %e, "failed to remove NAT"),
            }
        }
    }
    (applied, programmed)
}

/// The bridges this agent built, kept in a file so that after a restart it still removes its own
/// orphans, and only those: bridges live in the host namespace, where other agents (tests run
/// several on one machine) build theirs.
struct OwnedBridges(std::path::PathBuf);

impl OwnedBridges {
    fn load(&self) -> std::collections::BTreeSet<String> {
        std::fs::read_to_string(&self.0)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn save(&self, bridges: &std::collections::BTreeSet<String>) {
        let text: String = bridges.iter().map(|b| format!("{b}\n")).collect();
        let written = match self.0.parent() {
            Some(dir) => std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&self.0, text)),
            None => std::fs::write(&self.0, text),
        };
        if let Err(e) = written {
            warn!(file = %self.0.display(), error = %e, "cannot record this agent's bridges");
        }
    }
}

/// Ensures every planned network, then removes Strata networks that are not planned. Returns the
/// L3 networks that are up.
fn apply(driver: &NetworkDriver, want: &HostNetworks, owned: &OwnedBridges) -> Vec<String> {
    let mut l2_ok = Vec::new();
    let mut mine = owned.load();
    for (name, l2) in &want.l2 {
        // Recorded before it exists, so a crash in between cannot leak it.
        if mine.insert(l2.bridge()) {
            owned.save(&mine);
        }
        match driver.ensure_l2(l2) {
            Ok(()) => l2_ok.push(l2.bridge()),
            Err(e) => warn!(l2 = %name, error = %e, "failed to build the L2 network"),
        }
    }
    let mut l3_ok = Vec::new();
    for (name, l3) in &want.l3 {
        if !l2_ok.contains(&l3.bridge) {
            continue;
        }
        match driver.ensure_l3(l3) {
            Ok(()) => l3_ok.push(name.clone()),
            Err(e) => warn!(l3 = %name, error = %e, "failed to build the L3 network"),
        }
    }
    for (tap, sec) in &want.security {
        if let Err(e) = driver.ensure_nic_security(sec) {
            warn!(tap = %tap, error = %e, "failed to apply the NIC's security groups");
        }
    }
    // Orphans: what exists under Strata's names but is no longer wanted.
    match driver.inventory() {
        Ok(inv) => {
            for tap in inv
                .secured_taps
                .iter()
                .filter(|t| !want.security.contains_key(*t))
            {
                match driver.remove_nic_security(tap) {
                    Ok(()) => {
                        info!(tap = %tap, "removed the security groups of a NIC no instance here has")
                    }
                    Err(e) => {
                        warn!(tap = %tap, error = %e, "failed to remove a NIC's security groups")
                    }
                }
            }
            let want_ns: Vec<String> = want.l3.keys().map(|l3| driver.l3_netns(l3)).collect();
            for ns in inv.l3_namespaces.iter().filter(|ns| !want_ns.contains(ns)) {
                match driver.remove_l3_netns(ns) {
                    Ok(()) => info!(netns = %ns, "removed an L3 namespace no instance here uses"),
                    Err(e) => warn!(netns = %ns, error = %e, "failed to remove an L3 namespace"),
                }
            }
            let want_br: Vec<String> = want.l2.values().map(L2Spec::bridge).collect();
            let orphans: Vec<&String> = inv
                .bridges
                .iter()
                .filter(|b| !want_br.contains(b) && mine.contains(*b))
                .collect();
            for br in orphans {
                // A bridge that still has VM ports is left for the hypervisor driver to empty.
                match driver.host().links() {
                    Ok(links)
                        if links.iter().any(|l| {
                            l.master.as_deref() == Some(br.as_str())
                                && l.name.starts_with(names::TAP_PREFIX)
                        }) => {}
                    _ => match driver.remove_bridge(br) {
                        Ok(()) => {
                            mine.remove(br);
                            owned.save(&mine);
                            info!(bridge = %br, "removed a bridge no instance here uses")
                        }
                        Err(e) => warn!(bridge = %br, error = %e, "failed to remove a bridge"),
                    },
                }
            }
        }
        Err(e) => warn!(error = %e, "cannot list the host's networks"),
    }
    l3_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_apis::{VirtualMachineInstanceSpec, VmiL2Network};

    fn vmi(name: &str, nics: Vec<VmiNic>, user_data: Option<&str>) -> Arc<VirtualMachineInstance> {
        let mut v = VirtualMachineInstance::new(
            name,
            VirtualMachineInstanceSpec {
                host: "h1".into(),
                nics,
                user_data: user_data.map(Into::into),
                ..Default::default()
            },
        );
        v.metadata.namespace = Some("default".into());
        Arc::new(v)
    }

    fn nic(l3: &str, ip: &str, mac: &str, l2: VmiL2Network) -> VmiNic {
        VmiNic {
            l3_network: l3.into(),
            ip: ip.into(),
            prefix_length: 24,
            gateway: "10.0.0.1".into(),
            mac: mac.into(),
            l2,
            ..Default::default()
        }
    }

    fn flat() -> VmiL2Network {
        VmiL2Network {
            name: "flat".into(),
            network_type: L2NetworkType::NoVlan,
            physical_interface: Some("eth1".into()),
            ..Default::default()
        }
    }

    #[test]
    fn instances_sharing_an_l3_share_its_namespace_and_leases() {
        let vmis = vec![
            vmi(
                "b",
                vec![nic("l3", "10.0.0.12", "52:54:00:00:00:02", flat())],
                None,
            ),
            vmi(
                "a",
                vec![nic("l3", "10.0.0.11", "52:54:00:00:00:01", flat())],
                Some("#cloud-config"),
            ),
        ];
        let d = desired(&vmis, &NetworkConfig::default(), &PublishedVteps::default());
        assert!(d.problems.is_empty(), "{:?}", d.problems);
        assert_eq!(d.l2.len(), 1);
        assert_eq!(
            d.l2["flat"].kind,
            L2Type::NoVlan {
                interface: "eth1".into()
            }
        );
        let l3 = &d.l3["l3"];
        assert_eq!(l3.cidr.to_string(), "10.0.0.0/24");
        assert_eq!(l3.bridge, names::bridge("flat"));
        assert_eq!(l3.leases.len(), 2);
        assert_eq!(l3.leases[0].hostname.as_deref(), Some("a"));
        assert_eq!(
            d.metadata["l3"][&"10.0.0.11".parse().unwrap()].user_data,
            "#cloud-config"
        );
    }

    #[test]
    fn vxlan_needs_a_vtep_and_vlan_a_valid_id() {
        let vx = VmiL2Network {
            name: "vx".into(),
            network_type: L2NetworkType::Vxlan,
            vni: Some(5000),
            ..Default::default()
        };
        let vl = VmiL2Network {
            name: "vl".into(),
            network_type: L2NetworkType::Vlan,
            physical_interface: Some("eth1".into()),
            vlan_id: Some(5000),
            ..Default::default()
        };
        let vmis = vec![vmi(
            "a",
            vec![
                nic("l3a", "10.0.0.11", "52:54:00:00:00:01", vx),
                nic("l3b", "10.0.0.12", "52:54:00:00:00:02", vl),
            ],
            None,
        )];
        let d = desired(&vmis, &NetworkConfig::default(), &PublishedVteps::default());
        assert_eq!(d.problems.len(), 2, "{:?}", d.problems);
        assert!(d.l2.is_empty() && d.l3.is_empty());

        let cfg = NetworkConfig {
            vtep: Some("192.168.100.1".parse().unwrap()),
            vtep_peers: vec!["192.168.100.2".parse().unwrap()],
            ..Default::default()
        };
        let d = desired(&vmis, &cfg, &PublishedVteps::default());
        assert_eq!(d.problems.len(), 1, "only the VLAN id is wrong");
        let peers = |d: &HostNetworks| match &d.l2["vx"].kind {
            L2Type::Vxlan { peers, .. } => peers.clone(),
            other => panic!("not VXLAN: {other:?}"),
        };
        assert_eq!(peers(&d), vec![Ipv4Addr::new(192, 168, 100, 2)]);

        // The control plane's endpoints join the configured ones, once each.
        let mut l2 = L2Network::new("vx", Default::default());
        l2.status = Some(strata_apis::L2NetworkStatus {
            vteps: vec![
                "192.168.100.3".into(),
                "192.168.100.2".into(),
                "junk".into(),
            ],
            ..Default::default()
        });
        let d = desired(&vmis, &cfg, &published_vteps(&[Arc::new(l2)]));
        assert_eq!(
            peers(&d),
            vec![
                Ipv4Addr::new(192, 168, 100, 2),
                Ipv4Addr::new(192, 168, 100, 3)
            ]
        );
        assert_eq!(
            d.l3["l3a"].mtu,
            Some(1450),
            "VXLAN networks hand out the overlay MTU"
        );
    }

    #[test]
    fn security_groups_translate_into_the_taps_tables() {
        use strata_apis::{VmiNicSecurity, VmiSecurityRule};
        let rule = |cidr: Option<&str>, ports| VmiSecurityRule {
            protocol: ApiProtocol::TCP,
            ports,
            cidr: cidr.map(Into::into),
            priority: 7,
            action: RuleAction::Drop,
        };
        let mut n = nic("l3", "10.0.0.11", "52:54:00:AA:00:01", flat());
        n.security = Some(VmiNicSecurity {
            ingress_rules: vec![rule(
                Some("10.1.2.3/16"),
                Some(strata_apis::PortRange { start: 80, end: 90 }),
            )],
            egress_rules: vec![rule(Some("10.9.9.9"), None)],
            default_ingress_policy: RuleAction::Accept,
            default_egress_policy: RuleAction::Drop,
            ..Default::default()
        });
        let sec = nic_security("st-x", &n).unwrap().unwrap();
        assert_eq!(sec.tap, "st-x");
        assert_eq!(sec.mac.as_deref(), Some("52:54:00:aa:00:01"));
        assert_eq!(sec.ip, Some("10.0.0.11".parse().unwrap()));
        assert_eq!(
            sec.ingress,
            [SgRule {
                priority: 7,
                protocol: Protocol::Tcp,
                ports: Some((80, 90)),
                cidr: Some("10.1.0.0/16".parse().unwrap()),
                action: Action::Drop,
            }]
        );
        assert_eq!(sec.egress[0].cidr, Some("10.9.9.9/32".parse().unwrap()));
        assert_eq!(sec.default_ingress, Action::Accept);
        assert_eq!(sec.default_egress, Action::Drop);

        // No groups: no table. A rule that cannot be translated: a closed table, reported.
        let plain = nic("l3", "10.0.0.12", "52:54:00:00:00:02", flat());
        assert_eq!(nic_security("st-y", &plain), Ok(None));
        let mut bad = plain.clone();
        bad.security = Some(VmiNicSecurity {
            ingress_rules: vec![rule(Some("fe80::/64"), None)],
            ..Default::default()
        });
        assert!(nic_security("st-y", &bad).is_err());
        let v = vmi("a", vec![n, bad], None);
        let d = desired(
            std::slice::from_ref(&v),
            &NetworkConfig::default(),
            &PublishedVteps::default(),
        );
        assert_eq!(d.security.len(), 2);
        assert_eq!(d.problems.len(), 1, "{:?}", d.problems);
        let closed = &d.security[&tap(&v, 1)];
        assert!(closed.ingress.is_empty() && closed.egress.is_empty());
        assert_eq!(
            (closed.default_ingress, closed.default_egress),
            (Action::Drop, Action::Drop)
        );
    }

    #[test]
    fn an_eip_plans_its_public_l2_and_the_nat_of_its_private_l3() {
        let public = VmiL2Network {
            name: "pub".into(),
            network_type: L2NetworkType::NoVlan,
            physical_interface: Some("eth2".into()),
            ..Default::default()
        };
        let mut n = nic("l3", "10.0.0.11", "52:54:00:00:00:01", flat());
        n.eip = Some(strata_apis::VmiEip {
            name: "e1".into(),
            vip: "203.0.113.7".into(),
            l3_network: "public-1".into(),
            prefix_length: 24,
            gateway: Some("203.0.113.1".into()),
            l2: public,
        });
        let mut bad = nic("l3", "10.0.0.12", "52:54:00:00:00:02", flat());
        bad.eip = n.eip.clone().map(|mut e| {
            e.vip = "not-an-ip".into();
            e
        });
        let d = desired(
            &[vmi("a", vec![n], None), vmi("b", vec![bad], None)],
            &NetworkConfig::default(),
            &PublishedVteps::default(),
        );
        assert_eq!(d.problems.len(), 1, "{:?}", d.problems);
        assert!(d.l2.contains_key("pub") && d.l2.contains_key("flat"));
        let nat = &d.nat["l3"];
        assert_eq!(nat.public.bridge, names::bridge("pub"));
        assert_eq!(nat.public.cidr.to_string(), "203.0.113.0/24");
        assert_eq!(nat.public.gateway, Some("203.0.113.1".parse().unwrap()));
        assert_eq!(
            nat.eips,
            [Eip {
                vip: "203.0.113.7".parse().unwrap(),
                private_ip: "10.0.0.11".parse().unwrap(),
            }]
        );
    }

    #[test]
    fn port_forwardings_share_their_l3s_nat_and_one_public_network() {
        let public = |l2: &str| strata_apis::VmiEip {
            name: "web".into(),
            vip: "203.0.113.8".into(),
            l3_network: format!("{l2}-l3"),
            prefix_length: 24,
            gateway: None,
            l2: VmiL2Network {
                name: l2.into(),
                network_type: L2NetworkType::NoVlan,
                physical_interface: Some("eth2".into()),
                ..Default::default()
            },
        };
        let pf = |l2: &str, cidr: Option<&str>| VmiPortForwarding {
            public: public(l2),
            protocol: ForwardedProtocol::UDP,
            external_ports: strata_apis::PortRange {
                start: 5000,
                end: 5001,
            },
            internal_ports: strata_apis::PortRange { start: 53, end: 54 },
            allowed_cidr: cidr.map(Into::into),
        };
        let mut n = nic("l3", "10.0.0.11", "52:54:00:00:00:01", flat());
        n.port_forwardings = vec![
            pf("pub", Some("198.51.100.7/24")),
            pf("other-pub", None),
            pf("pub", Some("nonsense")),
        ];
        let d = desired(
            &[vmi("a", vec![n], None)],
            &NetworkConfig::default(),
            &PublishedVteps::default(),
        );
        assert_eq!(d.problems.len(), 2, "{:?}", d.problems);
        assert!(
            d.problems[0].contains("another public network"),
            "{:?}",
            d.problems
        );
        assert!(!d.l2.contains_key("other-pub"));
        assert_eq!(
            d.nat["l3"].port_forwards,
            [PortForward {
                vip: "203.0.113.8".parse().unwrap(),
                protocol: PfProtocol::Udp,
                external: (5000, 5001),
                private_ip: "10.0.0.11".parse().unwrap(),
                internal: (53, 54),
                allowed_cidr: Some("198.51.100.0/24".parse().unwrap()),
            }]
        );
        let planned: Vec<&str> = d.nat_of["default/a"]
            .iter()
            .map(|(l3, n)| {
                assert_eq!((l3.as_str(), n.kind.as_str()), ("l3", "PortForwarding"));
                n.name.as_str()
            })
            .collect();
        assert_eq!(planned, ["web"], "only the rule that was planned");
    }

    #[test]
    fn taps_are_per_instance_and_index() {
        let a = vmi("a", vec![], None);
        assert_ne!(tap(&a, 0), tap(&a, 1));
        assert!(tap(&a, 0).len() <= 15);
    }
}
