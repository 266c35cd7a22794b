//! Strata's host network driver: what the node agent uses to make a host's Linux networking match
//! the L2/L3 networks, security groups, EIPs and port forwardings of the VMs the controllers placed
//! on it (ZStack's "flat network provider", see `docs/architecture.md`).
//!
//! * [`names`]: deterministic ≤15-character names for bridges, taps, veths and namespaces, shared
//!   with the libvirt driver (taps are libvirt `<target dev=…/>`).
//! * [`l2`]: a bridge per L2 network (NoVlan, Vlan, Vxlan).
//! * [`l3`]: a namespace per L3 network with dnsmasq (static leases, DNS) and the metadata address.
//! * [`metadata`]: the user-data HTTP service inside that namespace.
//! * [`sg`]: security groups as per-NIC nftables tables.
//! * [`nat`]: EIP and port forwarding.
//!
//! Every operation is idempotent: `ensure_*` makes the host match a complete description and
//! `remove_*` succeeds when there is nothing to remove; `list_*` enumerate what exists (by name
//! prefix) so that the agent can remove orphans after a crash.
//!
//! ## Why iproute2 rather than rtnetlink
//! Links, addresses and namespaces are configured by running `ip`/`bridge` (with `-j` JSON output
//! for reading), not through the `rtnetlink` crate. A netlink socket is bound to the namespace of
//! the thread that opened it, so driving a host namespace and many L3 namespaces with rtnetlink
//! means one connection per namespace opened from a thread that entered it, and its builder API
//! changed shape in every recent release (0.14 → 0.17); `ip -n NS` / `ip netns exec NS` reach any
//! namespace without that, every step is the exact command an operator would type (and the one
//! `shared/recipes` verified on these machines), and the cost — a few ms per fork/exec — is
//! negligible next to booting a VM. nftables rules are built as typed JSON with the `nftables`
//! crate and applied with `nft -j -f -` in one transaction per table.
//!
//! ## Host namespace
//! [`DriverConfig::host_netns`] points the driver at a namespace that plays the host's root
//! namespace (bridges, taps, VXLAN devices and security groups live there), so tests and e2e runs
//! can put several hosts' plumbing on one machine. L3 namespaces are named namespaces, which are
//! global to the machine, so their names include [`DriverConfig::scope`].

pub mod error;
pub mod exec;
pub mod l2;
pub mod l3;
pub mod metadata;
pub mod names;
pub mod nat;
mod nft;
pub mod sg;

use std::path::PathBuf;

pub use error::{Error, Result};
pub use exec::Netns;
pub use l2::{L2Spec, L2Type};
pub use l3::{L3Spec, Lease, METADATA_IP};
pub use metadata::{InstanceMetadata, MetadataServer};
pub use nat::{Eip, NatSpec, PfProtocol, PortForward, PublicUplink};
pub use sg::{Action, NicSecurity, Protocol, SgRule};

/// Where the driver works.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// The namespace that plays the host's root namespace (`None`: the process's own).
    pub host_netns: Option<String>,
    /// Distinguishes the L3 namespaces of several driver instances on one machine (`""` normally).
    pub scope: String,
    /// Per-L3 dnsmasq files (hosts file, pid, log, leases).
    pub state_dir: PathBuf,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            host_netns: None,
            scope: String::new(),
            state_dir: "/var/lib/strata/network".into(),
        }
    }
}

/// Everything Strata-named that exists on the host, for the agent's orphan sweep.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    pub bridges: Vec<String>,
    /// Taps (and veths standing in for taps) with Strata's prefix.
    pub taps: Vec<String>,
    pub l3_namespaces: Vec<String>,
    /// Taps that have a security-group table.
    pub secured_taps: Vec<String>,
}

/// The network driver of one host.
#[derive(Clone, Debug)]
pub struct NetworkDriver {
    host: Netns,
    scope: String,
    state_dir: PathBuf,
}

impl NetworkDriver {
    pub fn new(config: DriverConfig) -> Self {
        NetworkDriver {
            host: Netns(config.host_netns),
            scope: config.scope,
            state_dir: config.state_dir,
        }
    }

    /// The host namespace commands run in.
    pub fn host(&self) -> &Netns {
        &self.host
    }

    /// The namespace of an L3 network on this host.
    pub fn l3_netns(&self, l3: &str) -> String {
        names::l3_netns(&self.scope, l3)
    }

    fn l3(&self) -> l3::L3Ctx<'_> {
        l3::L3Ctx {
            host: &self.host,
            scope: &self.scope,
            state_dir: &self.state_dir,
        }
    }

    /// Builds or repairs an L2 network's bridge and uplink.
    pub fn ensure_l2(&self, spec: &L2Spec) -> Result<()> {
        l2::ensure(&self.host, spec)
    }

    /// Removes an L2 network's bridge and the uplink devices Strata created.
    pub fn remove_l2(&self, spec: &L2Spec) -> Result<()> {
        l2::remove(&self.host, spec)
    }

    /// Removes a bridge known only by name (an orphan).
    pub fn remove_bridge(&self, bridge: &str) -> Result<()> {
        l2::remove_bridge(&self.host, bridge)
    }

    /// Builds or repairs an L3 namespace, its dnsmasq and leases. The L2 bridge must exist.
    pub fn ensure_l3(&self, spec: &L3Spec) -> Result<()> {
        self.l3().ensure(spec)
    }

    /// Removes an L3 network's namespace, dnsmasq and state.
    pub fn remove_l3(&self, l3: &str) -> Result<()> {
        self.l3().remove(l3)
    }

    /// Removes an L3 namespace known only by name (an orphan), and its guard table if its veth is gone.
    pub fn remove_l3_netns(&self, netns: &str) -> Result<()> {
        self.l3().remove_netns(netns)?;
        let links = self.host.links()?;
        for t in self.host.nft_tables("bridge")? {
            if let Some(rest) = t.strip_prefix(names::L3_GUARD_TABLE_PREFIX) {
                let veth = rest.replace('_', "-");
                if !links.iter().any(|l| l.name == veth) {
                    self.host.nft_delete_table("bridge", &t)?;
                }
            }
        }
        Ok(())
    }

    /// Applies a NIC's security group (atomic replace).
    pub fn ensure_nic_security(&self, sec: &NicSecurity) -> Result<()> {
        sg::ensure(&self.host, sec)
    }

    /// Removes a NIC's security group.
    pub fn remove_nic_security(&self, tap: &str) -> Result<()> {
        sg::remove(&self.host, tap)
    }

    /// Makes an L3's EIPs and port forwardings on this host exactly `spec`.
    pub fn ensure_nat(&self, spec: &NatSpec) -> Result<()> {
        nat::ensure(&self.host, &self.scope, spec)
    }

    /// Removes an L3's NAT and its veth into the public bridge.
    pub fn remove_nat(&self, l3: &str, public_bridge: &str) -> Result<()> {
        nat::remove(&self.host, &self.scope, l3, public_bridge)
    }

    /// Deletes a tap (libvirt removes its taps with the domain; this is for orphans).
    pub fn remove_tap(&self, tap: &str) -> Result<()> {
        if self.host.link_exists(tap)? {
            self.host.ip(&["link", "del", tap])?;
        }
        self.remove_nic_security(tap)
    }

    /// What exists on the host, by Strata's name prefixes.
    pub fn inventory(&self) -> Result<Inventory> {
        let links = self.host.links()?;
        Ok(Inventory {
            bridges: l2::list_bridges(&self.host)?,
            taps: links
                .iter()
                .filter(|l| l.name.starts_with(names::TAP_PREFIX))
                .map(|l| l.name.clone())
                .collect(),
            l3_namespaces: self.l3().list()?,
            secured_taps: sg::list_tables(&self.host)?
                .iter()
                .map(|t| t[names::SG_TABLE_PREFIX.len()..].replace('_', "-"))
                .collect(),
        })
    }
}
