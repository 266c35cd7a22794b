//! A lab of network namespaces standing in for hosts, guests and the outside world.
//!
//! Everything a test creates lives in namespaces it created, with names unique to the test and
//! process; [`Lab`]'s `Drop` kills their processes (dnsmasq, httpd) and deletes them even when
//! the test panics. Nothing is configured in the machine's own namespace.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use strata_network::{names, DriverConfig, NetworkDriver};

static SEQ: AtomicU32 = AtomicU32::new(0);

pub fn sh(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

pub fn ip(args: &[&str]) {
    sh("ip", args).unwrap();
}

pub struct Lab {
    tag: String,
    pub dir: tempfile::TempDir,
    netns: Mutex<Vec<String>>,
    drivers: Mutex<Vec<NetworkDriver>>,
}

impl Lab {
    pub fn new(test: &str) -> Lab {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let tag = names::hash(&[test, &std::process::id().to_string(), &n.to_string()], 6);
        Lab {
            tag,
            dir: tempfile::tempdir().unwrap(),
            netns: Mutex::default(),
            drivers: Mutex::default(),
        }
    }

    /// A fresh namespace owned by the lab, with `lo` up.
    pub fn netns(&self, role: &str) -> String {
        let name = format!("tn{}-{role}", self.tag);
        ip(&["netns", "add", &name]);
        self.netns.lock().unwrap().push(name.clone());
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        name
    }

    /// A "host": a namespace playing the host's root namespace, and a driver pointed at it.
    pub fn host(&self, role: &str) -> (String, NetworkDriver) {
        let ns = self.netns(role);
        let d = NetworkDriver::new(DriverConfig {
            host_netns: Some(ns.clone()),
            scope: ns.clone(),
            state_dir: self.dir.path().join(&ns),
        });
        self.drivers.lock().unwrap().push(d.clone());
        (ns, d)
    }

    /// A "VM": a namespace whose `eth0` is a veth whose host end, named like the instance's tap,
    /// is a port of `bridge` in `host`.
    pub fn vm(&self, host: &str, bridge: &str, instance: &str, mac: &str) -> Vm {
        let ns = self.netns(&format!("vm{}", names::hash(&[instance], 3)));
        let tap = names::tap(&format!("{}/{instance}", self.tag), 0);
        ip(&[
            "-n", host, "link", "add", &tap, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "address", mac, "up"]);
        ip(&["-n", host, "link", "set", &tap, "master", bridge, "up"]);
        Vm {
            ns,
            tap,
            mac: mac.to_string(),
            script: self.udhcpc_script(),
        }
    }

    fn udhcpc_script(&self) -> PathBuf {
        let p = self.dir.path().join("udhcpc.sh");
        if !p.exists() {
            // busybox udhcpc calls this with the lease in the environment.
            std::fs::write(
                &p,
                "#!/bin/sh\ncase \"$1\" in\nbound|renew)\n  ip addr flush dev \"$interface\"\n  \
                 ip addr add \"$ip/$mask\" dev \"$interface\"\n  \
                 [ -n \"$mtu\" ] && ip link set \"$interface\" mtu \"$mtu\"\n  \
                 [ -n \"$router\" ] && ip route replace default via \"${router%% *}\"\n  ;;\nesac\nexit 0\n",
            )
            .unwrap();
            sh("chmod", &["755", p.to_str().unwrap()]).unwrap();
        }
        p
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let mut all: Vec<String> = self.netns.lock().unwrap().clone();
        for d in self.drivers.lock().unwrap().iter() {
            if let Ok(inv) = d.inventory() {
                all.extend(inv.l3_namespaces);
            }
        }
        for ns in &all {
            if let Ok(pids) = sh("ip", &["netns", "pids", ns]) {
                for pid in pids.split_whitespace() {
                    let _ = sh("kill", &["-9", pid]);
                }
            }
        }
        // Processes started with the lab's files but outside its namespaces (e.g. a dnsmasq
        // left in a namespace the test deleted on purpose).
        let dir = self.dir.path().display().to_string();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let pid = entry.file_name().to_string_lossy().to_string();
            if pid.bytes().all(|b| b.is_ascii_digit()) {
                let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains(&dir) {
                    let _ = sh("kill", &["-9", &pid]);
                }
            }
        }
        for ns in &all {
            let _ = sh("ip", &["netns", "del", ns]);
        }
    }
}

pub struct Vm {
    pub ns: String,
    pub tap: String,
    pub mac: String,
    script: PathBuf,
}

impl Vm {
    /// Runs busybox udhcpc once; the address it configured, if it got a lease.
    pub fn dhcp(&self) -> Option<Ipv4Addr> {
        let r = sh(
            "ip",
            &[
                "netns",
                "exec",
                &self.ns,
                "busybox",
                "udhcpc",
                "-i",
                "eth0",
                "-n",
                "-q",
                "-f",
                "-t",
                "4",
                "-T",
                "1",
                "-s",
                self.script.to_str().unwrap(),
            ],
        );
        r.ok()?;
        self.ipv4()
    }

    /// The address on eth0.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        let out = sh(
            "ip",
            &["-n", &self.ns, "-j", "-4", "addr", "show", "dev", "eth0"],
        )
        .ok()?;
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        v[0]["addr_info"][0]["local"].as_str()?.parse().ok()
    }

    pub fn set_ip(&self, cidr: &str, gateway: Option<&str>) {
        ip(&["-n", &self.ns, "addr", "replace", cidr, "dev", "eth0"]);
        if let Some(gw) = gateway {
            ip(&["-n", &self.ns, "route", "replace", "default", "via", gw]);
        }
    }

    /// One ping with a 1 s timeout.
    pub fn ping_once(&self, to: &str) -> bool {
        sh(
            "ip",
            &["netns", "exec", &self.ns, "ping", "-c", "1", "-W", "1", to],
        )
        .is_ok()
    }

    /// Whether `to` answers a ping within ~`secs` seconds (ARP and bridge learning may need a
    /// moment the first time).
    pub fn reaches(&self, to: &str, secs: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if self.ping_once(to) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
        }
    }

    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String, String> {
        let mut full = vec!["netns", "exec", &self.ns, program];
        full.extend_from_slice(args);
        sh("ip", &full)
    }
}

/// A veth pair in `host` (`a`, `b`); `b` optionally moved into another namespace.
pub fn veth(host: &str, a: &str, b: &str, b_netns: Option<&str>) {
    match b_netns {
        Some(ns) => ip(&[
            "-n", host, "link", "add", a, "type", "veth", "peer", "name", b, "netns", ns,
        ]),
        None => ip(&[
            "-n", host, "link", "add", a, "type", "veth", "peer", "name", b,
        ]),
    }
    ip(&["-n", host, "link", "set", a, "up"]);
}
