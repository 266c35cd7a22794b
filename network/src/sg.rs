//! Security groups: nftables rules per VM NIC, in the bridge family of the host namespace.
//!
//! Each NIC gets its own table `strata_sg_<tap>` whose base chain hooks the bridge's forward path
//! and jumps to the NIC's `ingress` chain for frames leaving through the tap (towards the VM) and to
//! its `egress` chain for frames entering from it. A table per NIC makes "apply" an atomic replace
//! of exactly that NIC's rules (`add; delete; add table` in one nft transaction) and "remove" a
//! single `delete table`; listing tables by prefix finds orphans. The price is one base chain per
//! NIC on every bridged frame, which is fine for the tens of VMs a host runs.
//!
//! Statefulness: the bridge family cannot read conntrack on this kernel (no `nf_conntrack_bridge`:
//! `ct state` in a bridge table fails with EPROTO). Bridged IPv4 does pass the inet hooks
//! (`bridge-nf-call-iptables=1`, br_netfilter is built in) where conntrack runs, so the inet table
//! [`names::CT_TABLE`] sets bit 31 of the packet mark on packets of established/related
//! connections at prerouting, and the NIC chains accept packets carrying that bit before their
//! rules. Default policies: ingress drop and egress accept unless the group says otherwise; ARP and
//! DHCP replies are always let in (a VM must be able to get its address), non-IPv4 ingress follows
//! the default ingress policy (Strata's L3 networks are IPv4). Egress is also anti-spoofing when the
//! NIC's MAC/IP are known: frames with another source MAC, IPv4 source or ARP sender are dropped.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use nftables::expr::{BinaryOperation, Expression, MetaKey, NamedExpression, CT};
use nftables::stmt::{Mangle, Statement};
use nftables::types::{NfChainType, NfFamily, NfHook};

use crate::error::Result;
use crate::exec::Netns;
use crate::names;
use crate::nft::{self, TableBuilder};

/// The packet-mark bit meaning "belongs to an established or related connection".
pub const ESTABLISHED_MARK: u32 = 0x8000_0000;

/// What a rule (or a default policy) does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Accept,
    Drop,
}

/// The protocol a rule matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    All,
    Tcp,
    Udp,
    Icmp,
}

/// One security-group rule. For ingress rules `cidr` is the source, for egress the destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SgRule {
    /// Lower priorities are evaluated first; the first matching rule decides.
    pub priority: i32,
    pub protocol: Protocol,
    /// Inclusive destination port range (TCP/UDP only).
    pub ports: Option<(u16, u16)>,
    pub cidr: Option<Ipv4Net>,
    pub action: Action,
}

/// The firewall of one VM NIC: the union of its security groups' rules, resolved by the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NicSecurity {
    /// The NIC's tap ([`names::tap`]).
    pub tap: String,
    /// The NIC's MAC and IP, for anti-spoofing (skipped when `None`).
    pub mac: Option<String>,
    pub ip: Option<Ipv4Addr>,
    pub ingress: Vec<SgRule>,
    pub egress: Vec<SgRule>,
    pub default_ingress: Action,
    pub default_egress: Action,
}

impl NicSecurity {
    /// Default ingress drop, egress accept, no rules: what a NIC in a security group without rules gets.
    pub fn new(tap: impl Into<String>) -> Self {
        NicSecurity {
            tap: tap.into(),
            mac: None,
            ip: None,
            ingress: vec![],
            egress: vec![],
            default_ingress: Action::Drop,
            default_egress: Action::Accept,
        }
    }
}

fn verdict(a: Action) -> Statement<'static> {
    match a {
        Action::Accept => nft::accept(),
        Action::Drop => nft::drop(),
    }
}

fn established() -> Statement<'static> {
    nft::eq(
        Expression::BinaryOperation(Box::new(BinaryOperation::AND(
            nft::meta(MetaKey::Mark),
            nft::n(ESTABLISHED_MARK),
        ))),
        nft::n(ESTABLISHED_MARK),
    )
}

fn rule_stmts(r: &SgRule, ingress: bool) -> Vec<Statement<'static>> {
    let mut v = vec![nft::eq(nft::payload("ether", "type"), nft::s("ip"))];
    if let Some(c) = r.cidr {
        let field = if ingress { "saddr" } else { "daddr" };
        v.push(nft::eq(
            nft::payload("ip", field),
            nft::prefix(c.network().to_string(), c.prefix_len()),
        ));
    }
    let proto = match r.protocol {
        Protocol::All => None,
        Protocol::Tcp => Some("tcp"),
        Protocol::Udp => Some("udp"),
        Protocol::Icmp => Some("icmp"),
    };
    if let Some(p) = proto {
        v.push(nft::eq(nft::payload("ip", "protocol"), nft::s(p)));
    }
    if let (Some(p @ ("tcp" | "udp")), Some((lo, hi))) = (proto, r.ports) {
        let field = if p == "tcp" { "tcp" } else { "udp" };
        let right = if lo == hi {
            nft::n(lo.into())
        } else {
            nft::range(lo.into(), hi.into())
        };
        v.push(nft::eq(nft::payload(field, "dport"), right));
    }
    v.push(nft::counter());
    v.push(verdict(r.action));
    v
}

/// The NIC's table, replaced as a whole (pure; see [`ensure`]).
pub fn ruleset(sec: &NicSecurity) -> nftables::schema::Nftables<'static> {
    let table = names::sg_table(&sec.tap);
    let mut t = TableBuilder::new(NfFamily::Bridge, &table);
    t.base_chain("forward", NfChainType::Filter, NfHook::Forward, 0);
    t.chain("ingress");
    t.chain("egress");
    t.rule(
        "forward",
        vec![
            nft::eq(nft::meta(MetaKey::Oifname), nft::s(&sec.tap)),
            nft::jump("ingress"),
        ],
    );
    t.rule(
        "forward",
        vec![
            nft::eq(nft::meta(MetaKey::Iifname), nft::s(&sec.tap)),
            nft::jump("egress"),
        ],
    );

    // Ingress: established, ARP, DHCP replies, then the rules by priority, then the default.
    t.rule("ingress", vec![established(), nft::accept()]);
    t.rule(
        "ingress",
        vec![
            nft::eq(nft::payload("ether", "type"), nft::s("arp")),
            nft::accept(),
        ],
    );
    t.rule(
        "ingress",
        vec![
            nft::eq(nft::payload("ether", "type"), nft::s("ip")),
            nft::eq(nft::payload("ip", "protocol"), nft::s("udp")),
            nft::eq(nft::payload("udp", "sport"), nft::n(67)),
            nft::eq(nft::payload("udp", "dport"), nft::n(68)),
            nft::accept(),
        ],
    );
    let mut ingress = sec.ingress.clone();
    ingress.sort_by_key(|r| r.priority);
    for r in &ingress {
        t.rule("ingress", rule_stmts(r, true));
    }
    t.rule(
        "ingress",
        vec![nft::counter(), verdict(sec.default_ingress)],
    );

    // Egress: anti-spoofing, established, DHCP requests, rules, default.
    if let Some(mac) = &sec.mac {
        t.rule(
            "egress",
            vec![
                nft::ne(
                    nft::payload("ether", "saddr"),
                    nft::s(mac.to_ascii_lowercase()),
                ),
                nft::drop(),
            ],
        );
    }
    if let Some(ip) = sec.ip {
        let own = || nft::set(vec![nft::s(ip.to_string()), nft::s("0.0.0.0")]);
        t.rule(
            "egress",
            vec![
                nft::eq(nft::payload("ether", "type"), nft::s("ip")),
                nft::ne(nft::payload("ip", "saddr"), own()),
                nft::drop(),
            ],
        );
        t.rule(
            "egress",
            vec![
                nft::eq(nft::payload("ether", "type"), nft::s("arp")),
                nft::ne(nft::payload("arp", "saddr ip"), own()),
                nft::drop(),
            ],
        );
    }
    t.rule("egress", vec![established(), nft::accept()]);
    t.rule(
        "egress",
        vec![
            nft::ne(nft::payload("ether", "type"), nft::s("ip")),
            nft::accept(),
        ],
    );
    t.rule(
        "egress",
        vec![
            nft::eq(nft::payload("ip", "protocol"), nft::s("udp")),
            nft::eq(nft::payload("udp", "sport"), nft::n(68)),
            nft::eq(nft::payload("udp", "dport"), nft::n(67)),
            nft::accept(),
        ],
    );
    let mut egress = sec.egress.clone();
    egress.sort_by_key(|r| r.priority);
    for r in &egress {
        t.rule("egress", rule_stmts(r, false));
    }
    t.rule("egress", vec![verdict(sec.default_egress)]);
    t.replace()
}

/// The inet table that marks established/related packets (see the module docs).
pub fn ct_ruleset() -> nftables::schema::Nftables<'static> {
    let mut t = TableBuilder::new(NfFamily::INet, names::CT_TABLE);
    // After conntrack (-200) has attached the connection to the packet.
    t.base_chain("prerouting", NfChainType::Filter, NfHook::Prerouting, 0);
    t.rule(
        "prerouting",
        vec![
            // Only bridged traffic of Strata's bridges (br_netfilter presents the bridge as the
            // input interface), so the mark bit never touches the host's own routing.
            nft::eq(
                nft::meta(MetaKey::Iifname),
                nft::s(format!("{}*", names::BRIDGE_PREFIX)),
            ),
            Statement::Match(nftables::stmt::Match {
                left: Expression::Named(NamedExpression::CT(CT {
                    key: "state".into(),
                    family: None,
                    dir: None,
                })),
                right: Expression::List(vec![nft::s("established"), nft::s("related")]),
                op: nftables::stmt::Operator::IN,
            }),
            Statement::Mangle(Mangle {
                key: nft::meta(MetaKey::Mark),
                value: Expression::BinaryOperation(Box::new(BinaryOperation::OR(vec![
                    nft::meta(MetaKey::Mark),
                    nft::n(ESTABLISHED_MARK),
                ]))),
            }),
        ],
    );
    t.replace()
}

/// Applies a NIC's security group, replacing its previous rules atomically.
pub fn ensure(host: &Netns, sec: &NicSecurity) -> Result<()> {
    // Replaced every time (one atomic transaction) so a host with an older version converges.
    host.nft_apply(names::CT_TABLE, &ct_ruleset())?;
    // Stateful rules rely on bridged IPv4 traversing the inet hooks.
    let key = "net.bridge.bridge-nf-call-iptables";
    if host.exec("sysctl", &["-n", key])?.trim() != "1" {
        host.exec("sysctl", &["-qw", &format!("{key}=1")])?;
    }
    host.nft_apply(&names::sg_table(&sec.tap), &ruleset(sec))
}

/// Removes a NIC's security group (no-op when it has none).
pub fn remove(host: &Netns, tap: &str) -> Result<()> {
    host.nft_delete_table("bridge", &names::sg_table(tap))
}

/// The SG tables in the host namespace.
pub fn list_tables(host: &Netns) -> Result<Vec<String>> {
    Ok(host
        .nft_tables("bridge")?
        .into_iter()
        .filter(|t| t.starts_with(names::SG_TABLE_PREFIX))
        .collect())
}
