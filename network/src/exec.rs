//! Running iproute2, nft and friends, in the driver's host namespace or in an L3 namespace.
//!
//! Commands run synchronously: each takes a few milliseconds, and the agent calls the driver from
//! `spawn_blocking`. `ip -n NS` / `ip netns exec NS` select the namespace per command, so this
//! process never changes its own namespace (except the metadata listener's short-lived thread).

use std::process::{Command, Stdio};

use crate::error::{Error, Result};

/// Where a command runs: the driver's host namespace (`None` = the process's own) or a named one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Netns(pub Option<String>);

impl Netns {
    /// The process's own namespace.
    pub fn current() -> Self {
        Netns(None)
    }

    /// A named namespace (`/run/netns/<name>`).
    pub fn named(name: impl Into<String>) -> Self {
        Netns(Some(name.into()))
    }

    /// `ip [-n NS] args…`
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full: Vec<&str> = Vec::with_capacity(args.len() + 2);
        if let Some(ns) = &self.0 {
            full.extend(["-n", ns.as_str()]);
        }
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// `bridge [-n NS] args…`
    pub fn bridge(&self, args: &[&str]) -> Result<String> {
        let mut full: Vec<&str> = Vec::with_capacity(args.len() + 2);
        if let Some(ns) = &self.0 {
            full.extend(["-n", ns.as_str()]);
        }
        full.extend_from_slice(args);
        run("bridge", &full)
    }

    /// Runs `program args…` in this namespace (`ip netns exec NS program args…`).
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        match &self.0 {
            None => run(program, args),
            Some(ns) => {
                let mut full = vec!["netns", "exec", ns.as_str(), program];
                full.extend_from_slice(args);
                run("ip", &full)
            }
        }
    }

    /// The program and leading arguments that run `nft` in this namespace, for the nftables crate's
    /// helpers (which append `-j -f -`).
    pub fn nft_program(&self) -> (String, Vec<String>) {
        match &self.0 {
            None => ("nft".into(), vec![]),
            Some(ns) => (
                "ip".into(),
                vec!["netns".into(), "exec".into(), ns.clone(), "nft".into()],
            ),
        }
    }

    /// Applies an nftables JSON ruleset in one transaction in this namespace.
    pub fn nft_apply(&self, what: &str, ruleset: &nftables::schema::Nftables) -> Result<()> {
        let (program, args) = self.nft_program();
        nftables::helper::apply_ruleset_with_args(ruleset, Some(program.as_str()), args.iter())
            .map_err(|source| Error::Nft {
                what: what.to_string(),
                source,
            })
    }

    /// Names of the nftables tables of `family` in this namespace.
    pub fn nft_tables(&self, family: &str) -> Result<Vec<String>> {
        let out = self.exec("nft", &["-j", "list", "tables", family])?;
        let v: serde_json::Value = serde_json::from_str(&out).map_err(|source| Error::Parse {
            command: format!("nft -j list tables {family}"),
            source,
        })?;
        Ok(v["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o["table"]["name"].as_str().map(str::to_string))
            .collect())
    }

    /// Deletes an nftables table if it exists.
    pub fn nft_delete_table(&self, family: &str, table: &str) -> Result<()> {
        if self.nft_tables(family)?.iter().any(|t| t == table) {
            self.exec("nft", &["delete", "table", family, table])?;
        }
        Ok(())
    }

    /// Whether a link exists in this namespace.
    pub fn link_exists(&self, name: &str) -> Result<bool> {
        Ok(self.links()?.iter().any(|l| l.name == name))
    }

    /// All links of this namespace, from `ip -j link show`.
    pub fn links(&self) -> Result<Vec<LinkInfo>> {
        let out = self.ip(&["-j", "-d", "link", "show"])?;
        let v: serde_json::Value = serde_json::from_str(&out).map_err(|source| Error::Parse {
            command: "ip -j -d link show".into(),
            source,
        })?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .map(|l| LinkInfo {
                name: l["ifname"].as_str().unwrap_or_default().to_string(),
                master: l["master"].as_str().map(str::to_string),
                kind: l["linkinfo"]["info_kind"].as_str().map(str::to_string),
                mtu: l["mtu"].as_u64().map(|m| m as u32),
                up: l["flags"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|x| x.as_str() == Some("UP"))),
                vxlan_id: l["linkinfo"]["info_data"]["id"].as_u64().map(|m| m as u32),
            })
            .collect())
    }
}

/// What the driver needs to know about an existing link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub name: String,
    pub master: Option<String>,
    pub kind: Option<String>,
    pub mtu: Option<u32>,
    pub up: bool,
    pub vxlan_id: Option<u32>,
}

/// Runs a command, returning its stdout, or its stderr as the error.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    tracing::debug!(program, ?args, "run");
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            program: program.to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(Error::Command {
            command: format!("{program} {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// All named network namespaces (`ip netns list`).
pub fn netns_list() -> Result<Vec<String>> {
    let out = run("ip", &["-j", "netns", "list"])?;
    if out.trim().is_empty() {
        return Ok(vec![]);
    }
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|source| Error::Parse {
        command: "ip -j netns list".into(),
        source,
    })?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["name"].as_str().map(str::to_string))
        .collect())
}

/// Creates a named namespace with `lo` up, unless it exists.
pub fn ensure_netns(name: &str) -> Result<()> {
    if !netns_list()?.iter().any(|n| n == name) {
        run("ip", &["netns", "add", name])?;
    }
    Netns::named(name).ip(&["link", "set", "lo", "up"])?;
    Ok(())
}

/// Deletes a named namespace if it exists.
pub fn delete_netns(name: &str) -> Result<()> {
    if netns_list()?.iter().any(|n| n == name) {
        run("ip", &["netns", "del", name])?;
    }
    Ok(())
}
