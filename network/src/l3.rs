//! L3 networks: ZStack's flat network with distributed DHCP.
//!
//! Every host that runs VMs of an L3 network gets a namespace for it, connected to the L2 bridge by
//! a veth (`sd-…` on the bridge, [`names::L3_INNER_IF`] inside). Inside the namespace:
//!
//! * the L3's **gateway address** (`gateway/prefix`) — the namespace is the DHCP server, the DNS
//!   server, the metadata server and the router for EIPs and port forwarding of this host's VMs.
//!   We use the gateway rather than a separate address reserved from the range because the
//!   controllers' IPAM reserves nothing else today, and because NAT (EIP, port forwarding) needs the
//!   VMs' replies to come back through this namespace, which they do when it is their default
//!   route (ZStack's flat EIP puts the gateway address into its EIP namespace for the same reason);
//! * `169.254.169.254/32`, where [`crate::metadata`] serves user data;
//! * dnsmasq with the static MAC→IP leases the controllers allocated (`dhcp-hostsfile`, reloaded
//!   with SIGHUP; `dhcp-range=…,static`, so there is no dynamic pool and unknown MACs get no
//!   address), also answering DNS for the VMs' host names.
//!
//! Because every host holds the same gateway address, the namespace must only be seen by this
//! host's VMs ([`L3Spec::local_only`]): a bridge-family nftables table lets frames to and from the
//! namespace's veth pass only to and from tap ports (`st-*`), so ARP for the gateway and DHCP never
//! cross the uplink to another host (ZStack does the same with ebtables on the uplink). Turning it
//! off gives a single DHCP server for the whole L2 (one host serving others across VXLAN).

use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use nftables::expr::MetaKey;
use nftables::types::{NfChainType, NfFamily, NfHook};

use crate::error::{Error, Result};
use crate::exec::{self, Netns};
use crate::names;
use crate::nft::{self, TableBuilder};

/// The metadata service address, in every L3 namespace.
pub const METADATA_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// A static DHCP lease.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lease {
    /// `52:54:00:…`, lowercase.
    pub mac: String,
    pub ip: Ipv4Addr,
    /// Host name handed out with the lease and resolvable through the namespace's DNS.
    pub hostname: Option<String>,
}

/// A resolved L3 network as a host must build it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L3Spec {
    /// The L3Network's name; the namespace and veth names derive from it.
    pub name: String,
    /// The bridge of its L2 network ([`crate::L2Spec::bridge`]).
    pub bridge: String,
    pub cidr: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// DNS servers handed out by DHCP; the gateway (dnsmasq itself) when empty.
    pub dns: Vec<Ipv4Addr>,
    /// DNS domain of the VMs' host names.
    pub domain: Option<String>,
    /// Interface MTU handed out by DHCP (option 26) and set on the veth; 1450 on VXLAN networks.
    pub mtu: Option<u32>,
    /// Keep the namespace visible to this host's taps only (see the module docs).
    pub local_only: bool,
    /// All leases of this host's VMs on this L3.
    pub leases: Vec<Lease>,
}

pub(crate) struct L3Ctx<'a> {
    pub host: &'a Netns,
    pub scope: &'a str,
    pub state_dir: &'a Path,
}

impl L3Ctx<'_> {
    fn dir(&self, netns: &str) -> PathBuf {
        self.state_dir.join(netns)
    }

    pub fn ensure(&self, spec: &L3Spec) -> Result<()> {
        if !spec.cidr.contains(&spec.gateway) {
            return Err(Error::Invalid(format!(
                "gateway {} of L3 network {} is outside {}",
                spec.gateway, spec.name, spec.cidr
            )));
        }
        let netns = names::l3_netns(self.scope, &spec.name);
        let inner = Netns::named(&netns);
        let veth = names::l3_veth(&spec.name);
        let dir = self.dir(&netns);
        mkdir(&dir)?;
        write_if_changed(&dir.join("l3name"), &spec.name)?;

        exec::ensure_netns(&netns)?;
        inner.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        // Both ends or none: a host end whose peer is not in the namespace (the namespace was
        // deleted and recreated) is replaced.
        if self.host.link_exists(&veth)? && !inner.link_exists(names::L3_INNER_IF)? {
            self.host.ip(&["link", "del", &veth])?;
        }
        if !self.host.link_exists(&veth)? {
            self.host.ip(&[
                "link",
                "add",
                &veth,
                "type",
                "veth",
                "peer",
                "name",
                names::L3_INNER_IF,
                "netns",
                &netns,
            ])?;
        }
        if let Some(mtu) = spec.mtu {
            let m = mtu.to_string();
            self.host.ip(&["link", "set", &veth, "mtu", &m])?;
            inner.ip(&["link", "set", names::L3_INNER_IF, "mtu", &m])?;
        }
        self.host
            .ip(&["link", "set", &veth, "master", &spec.bridge, "up"])?;
        let want = [
            format!("{}/{}", spec.gateway, spec.cidr.prefix_len()),
            format!("{METADATA_IP}/32"),
        ];
        for a in addresses(&inner, names::L3_INNER_IF)? {
            if !want.contains(&a) {
                inner.ip(&["addr", "del", &a, "dev", names::L3_INNER_IF])?;
            }
        }
        for a in &want {
            inner.ip(&["addr", "replace", a, "dev", names::L3_INNER_IF])?;
        }
        inner.ip(&["link", "set", names::L3_INNER_IF, "up"])?;

        let guard = names::l3_guard_table(&veth);
        if spec.local_only {
            let mut t = TableBuilder::new(NfFamily::Bridge, &guard);
            t.base_chain("forward", NfChainType::Filter, NfHook::Forward, -10);
            let taps = nft::s(format!("{}*", names::TAP_PREFIX));
            t.rule(
                "forward",
                vec![
                    nft::eq(nft::meta(MetaKey::Iifname), nft::s(&veth)),
                    nft::ne(nft::meta(MetaKey::Oifname), taps.clone()),
                    nft::drop(),
                ],
            );
            t.rule(
                "forward",
                vec![
                    nft::eq(nft::meta(MetaKey::Oifname), nft::s(&veth)),
                    nft::ne(nft::meta(MetaKey::Iifname), taps),
                    nft::drop(),
                ],
            );
            self.host.nft_apply(&guard, &t.replace())?;
        } else {
            self.host.nft_delete_table("bridge", &guard)?;
        }

        self.ensure_dnsmasq(spec, &netns, &dir)
    }

    fn ensure_dnsmasq(&self, spec: &L3Spec, netns: &str, dir: &Path) -> Result<()> {
        let hosts = dir.join("hosts");
        let hosts_changed = write_if_changed(&hosts, &hostsfile(&spec.leases))?;
        let args = dnsmasq_args(spec, dir);
        let args_changed = write_if_changed(&dir.join("args"), &args.join("\n"))?;
        // A dnsmasq in a dead namespace or with another configuration is replaced.
        match dnsmasq_pid(dir) {
            Some(pid) if !args_changed && in_netns(pid, netns) => {
                if hosts_changed {
                    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).map_err(|e| {
                        Error::Dnsmasq {
                            netns: netns.into(),
                            detail: format!("SIGHUP: {e}"),
                        }
                    })?;
                }
                Ok(())
            }
            running => {
                if let Some(pid) = running {
                    stop_pid(pid);
                }
                start_dnsmasq(netns, dir, &args)
            }
        }
    }

    /// Removes the L3's namespace (with dnsmasq and the veth) and its state.
    pub fn remove(&self, l3: &str) -> Result<()> {
        let netns = names::l3_netns(self.scope, l3);
        self.host
            .nft_delete_table("bridge", &names::l3_guard_table(&names::l3_veth(l3)))?;
        self.remove_netns(&netns)
    }

    /// Removes an L3 namespace by its name (orphans whose L3 name is unknown).
    pub fn remove_netns(&self, netns: &str) -> Result<()> {
        let dir = self.dir(netns);
        if let Some(pid) = dnsmasq_pid(&dir) {
            stop_pid(pid);
        }
        // Deleting the inner end removes the veth pair at once; the kernel tears a deleted
        // namespace down asynchronously, and the host-side veth (which keeps the L3's guard
        // table alive) would outlive this call. Absent already is fine.
        let _ = Netns::named(netns).ip(&["link", "del", names::L3_INNER_IF]);
        exec::delete_netns(netns)?;
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Io {
                path: dir,
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// This scope's L3 namespaces.
    pub fn list(&self) -> Result<Vec<String>> {
        let prefix = names::netns_prefix(self.scope);
        Ok(exec::netns_list()?
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect())
    }
}

/// The IPv4 addresses (`a.b.c.d/len`) of a device.
pub(crate) fn addresses(ns: &Netns, dev: &str) -> Result<Vec<String>> {
    let out = ns.ip(&["-j", "-4", "addr", "show", "dev", dev])?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|source| Error::Parse {
        command: format!("ip -j addr show dev {dev}"),
        source,
    })?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| {
            Some(format!(
                "{}/{}",
                a["local"].as_str()?,
                a["prefixlen"].as_u64()?
            ))
        })
        .collect())
}

/// dnsmasq's `dhcp-hostsfile`: `mac,ip[,hostname]` per line, sorted so that the same leases always
/// give the same file (and no needless SIGHUP).
pub fn hostsfile(leases: &[Lease]) -> String {
    let mut by_mac: BTreeMap<String, &Lease> = BTreeMap::new();
    for l in leases {
        by_mac.insert(l.mac.to_ascii_lowercase(), l);
    }
    let mut out = String::new();
    for (mac, l) in by_mac {
        out.push_str(&format!("{mac},{}", l.ip));
        if let Some(h) = l
            .hostname
            .as_deref()
            .map(sanitize_hostname)
            .filter(|h| !h.is_empty())
        {
            out.push_str(&format!(",{h}"));
        }
        out.push('\n');
    }
    out
}

/// A DNS label from a Kubernetes name (which may contain dots).
fn sanitize_hostname(h: &str) -> String {
    let s: String = h
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    s.trim_matches('-').to_string()
}

/// The dnsmasq command line for an L3 namespace.
pub fn dnsmasq_args(spec: &L3Spec, dir: &Path) -> Vec<String> {
    let d = |f: &str| dir.join(f).display().to_string();
    let dns = if spec.dns.is_empty() {
        spec.gateway.to_string()
    } else {
        spec.dns
            .iter()
            .map(Ipv4Addr::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut a = vec![
        "--conf-file=/dev/null".to_string(),
        "--no-resolv".into(),
        "--no-hosts".into(),
        format!("--interface={}", names::L3_INNER_IF),
        "--bind-interfaces".into(),
        "--except-interface=lo".into(),
        format!(
            "--dhcp-range={},static,{},12h",
            spec.cidr.network(),
            spec.cidr.netmask()
        ),
        "--dhcp-authoritative".into(),
        format!("--dhcp-option=option:router,{}", spec.gateway),
        format!("--dhcp-option=option:dns-server,{dns}"),
        format!("--dhcp-hostsfile={}", d("hosts")),
        format!("--dhcp-leasefile={}", d("leases")),
        format!("--pid-file={}", d("dnsmasq.pid")),
        format!("--log-facility={}", d("dnsmasq.log")),
        "--log-dhcp".into(),
    ];
    if let Some(mtu) = spec.mtu {
        // Forced: many clients (busybox udhcpc by default) do not request option 26, and an
        // overlay network with the wrong MTU half-works (small packets pass, large ones vanish).
        a.push(format!("--dhcp-option-force=option:mtu,{mtu}"));
    }
    if let Some(domain) = &spec.domain {
        a.push(format!("--domain={domain}"));
        a.push(format!("--local=/{domain}/"));
    }
    a
}

/// The pid of the dnsmasq started for `dir`, if it is alive.
fn dnsmasq_pid(dir: &Path) -> Option<nix::unistd::Pid> {
    let pid: i32 = fs::read_to_string(dir.join("dnsmasq.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline);
    let pid = nix::unistd::Pid::from_raw(pid);
    (cmdline.contains("dnsmasq") && cmdline.contains(&dir.display().to_string()) && !is_zombie(pid))
        .then_some(pid)
}

/// Whether `pid` runs in the named namespace (a namespace deleted and recreated behind our back
/// leaves dnsmasq serving the dead one, which its open sockets keep alive).
fn in_netns(pid: nix::unistd::Pid, netns: &str) -> bool {
    let (Ok(want), Ok(have)) = (
        fs::metadata(format!("/run/netns/{netns}")),
        fs::metadata(format!("/proc/{pid}/ns/net")),
    ) else {
        return false;
    };
    want.ino() == have.ino() && want.dev() == have.dev()
}

/// The pid of the dnsmasq serving `netns` from `dir`, if it is alive and in that namespace.
fn running_dnsmasq(dir: &Path, netns: &str) -> Option<nix::unistd::Pid> {
    dnsmasq_pid(dir).filter(|pid| in_netns(*pid, netns))
}

fn stop_pid(pid: nix::unistd::Pid) {
    use nix::sys::signal::{kill, Signal};
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if kill(pid, None).is_err() || is_zombie(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = kill(pid, Signal::SIGKILL);
}

fn is_zombie(pid: nix::unistd::Pid) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// Starts dnsmasq in the namespace. It daemonizes (so it outlives an agent restart, and the agent
/// finds it again by its pid file); its stderr goes to a file because startup errors are reported
/// there before it detaches.
fn start_dnsmasq(netns: &str, dir: &Path, args: &[String]) -> Result<()> {
    let pidfile = dir.join("dnsmasq.pid");
    let _ = fs::remove_file(&pidfile);
    let errpath = dir.join("dnsmasq.stderr");
    let err = fs::File::create(&errpath).map_err(|source| Error::Io {
        path: errpath.clone(),
        source,
    })?;
    let status = Command::new("ip")
        .args(["netns", "exec", netns, "dnsmasq"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .status()
        .map_err(|source| Error::Spawn {
            program: "dnsmasq".into(),
            source,
        })?;
    if !status.success() {
        let detail = fs::read_to_string(&errpath).unwrap_or_default();
        return Err(Error::Dnsmasq {
            netns: netns.into(),
            detail: format!("{status}: {}", detail.trim()),
        });
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while running_dnsmasq(dir, netns).is_none() {
        if Instant::now() > deadline {
            return Err(Error::Dnsmasq {
                netns: netns.into(),
                detail: "no pid file after 5 s".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn mkdir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.into(),
        source,
    })?;
    // dnsmasq re-reads the hosts file after dropping privileges to `nobody`.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).map_err(|source| Error::Io {
        path: dir.into(),
        source,
    })
}

/// Writes `content` atomically (temp file + rename) if it differs; returns whether it changed.
pub(crate) fn write_if_changed(path: &Path, content: &str) -> Result<bool> {
    if fs::read_to_string(path).ok().as_deref() == Some(content) {
        return Ok(false);
    }
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, content).map_err(|source| Error::Io {
        path: tmp.clone(),
        source,
    })?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).map_err(|source| Error::Io {
        path: tmp.clone(),
        source,
    })?;
    fs::rename(&tmp, path).map_err(|source| Error::Io {
        path: path.into(),
        source,
    })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostsfile_is_sorted_and_sanitized() {
        let leases = vec![
            Lease {
                mac: "52:54:00:00:00:02".into(),
                ip: "10.0.0.12".parse().unwrap(),
                hostname: None,
            },
            Lease {
                mac: "52:54:00:00:00:01".into(),
                ip: "10.0.0.11".parse().unwrap(),
                hostname: Some("ns.VM_1".into()),
            },
        ];
        assert_eq!(
            hostsfile(&leases),
            "52:54:00:00:00:01,10.0.0.11,ns-vm-1\n52:54:00:00:00:02,10.0.0.12\n"
        );
    }

    #[test]
    fn dnsmasq_has_no_dynamic_pool() {
        let spec = L3Spec {
            name: "l3".into(),
            bridge: "sb-x".into(),
            cidr: "10.1.0.0/24".parse().unwrap(),
            gateway: "10.1.0.1".parse().unwrap(),
            dns: vec![],
            domain: None,
            mtu: Some(1450),
            local_only: true,
            leases: vec![],
        };
        let a = dnsmasq_args(&spec, Path::new("/x"));
        assert!(a.contains(&"--dhcp-range=10.1.0.0,static,255.255.255.0,12h".to_string()));
        assert!(a.contains(&"--dhcp-option=option:dns-server,10.1.0.1".to_string()));
        assert!(a.contains(&"--dhcp-option-force=option:mtu,1450".to_string()));
    }
}
