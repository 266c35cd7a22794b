//! Address allocation. Each address is an IpAddress object whose name is derived from the
//! network and the address, so creating it *is* the allocation: the API server refuses a
//! second object of that name. The cache only suggests which addresses are free.

use std::{collections::BTreeSet, net::Ipv4Addr};

use kube::{
    api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions},
    runtime::reflector::ObjectRef,
    Api, ResourceExt,
};
use serde_json::json;
use strata_apis::{
    condition::LABEL_L3_NETWORK, l3network::Subnet, IpAddress, IpAddressSpec, VirtualMachine,
    VmNicStatus,
};

use super::{vm_key, Network, Problem};
use crate::{Context, Error};

/// Label on IpAddress objects naming the uid of the VM holding them, so a VM's addresses can be
/// found and released without scanning every network.
pub(crate) const LABEL_OWNER_UID: &str = "strata.io/owner-uid";

/// Condition reason: the network has no free address.
pub(crate) const IP_EXHAUSTED: &str = "IPExhausted";
/// Condition reason: the static address asked for is held by another VM.
pub(crate) const IP_CONFLICT: &str = "IPConflict";
/// Condition reason: the static address asked for can never be given on its network.
pub(crate) const IP_OUT_OF_RANGE: &str = "IPOutOfRange";

/// The first address of the ranges, from the `start`-th one on and wrapping around, that is
/// not taken. The network, broadcast and gateway addresses are never handed out, whatever the
/// range says.
pub(crate) fn next_free(
    subnet: &Subnet,
    taken: &BTreeSet<Ipv4Addr>,
    start: u64,
) -> Option<Ipv4Addr> {
    let reserved = [subnet.net.network(), subnet.net.broadcast(), subnet.gateway];
    let start = usize::try_from(start % subnet.size().max(1)).unwrap_or(0);
    subnet
        .addresses()
        .skip(start)
        .chain(subnet.addresses().take(start))
        .find(|a| !taken.contains(a) && !reserved.contains(a) && subnet.net.contains(a))
}

/// Where in its network's ranges the search for NIC `index` of the VM with `uid` starts: a
/// hash, so VMs created together do not all race for the same lowest address (each lost race
/// costs a create and a get), and the same on every retry.
pub(crate) fn search_start(uid: &str, index: usize) -> u64 {
    let fnv = uid
        .bytes()
        .chain(index.to_le_bytes())
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    // splitmix64's finaliser spreads the low bits FNV leaves alike.
    let mut z = fnv;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Why a static address (`spec.nics[].ip`) cannot be used, whoever holds what.
pub(crate) fn check_static(subnet: &Subnet, text: &str) -> Result<Ipv4Addr, String> {
    let ip: Ipv4Addr = text
        .parse()
        .map_err(|_| format!("{text:?} is not an IPv4 address"))?;
    if ip == subnet.gateway {
        return Err(format!("{ip} is the gateway"));
    }
    if ip == subnet.net.network() || ip == subnet.net.broadcast() {
        return Err(format!("{ip} is not a host address of {}", subnet.net));
    }
    if !subnet.ranges.iter().any(|(s, e)| (*s..=*e).contains(&ip)) {
        let ranges: Vec<String> = subnet
            .ranges
            .iter()
            .map(|(s, e)| format!("{s}-{e}"))
            .collect();
        return Err(format!("{ip} is outside the ranges {}", ranges.join(", ")));
    }
    Ok(ip)
}

/// The static address each NIC asks for (`None`: a dynamic one), every one checked against
/// its network. Pure, so a VM asking for an impossible address is refused before it takes a
/// host.
pub(crate) fn static_addresses(
    vm: &VirtualMachine,
    networks: &[Network],
) -> Result<Vec<Option<Ipv4Addr>>, Problem> {
    networks
        .iter()
        .enumerate()
        .map(|(index, network)| {
            let asked = vm.spec.nics.get(index).and_then(|n| n.ip.as_deref());
            asked
                .map(|text| {
                    check_static(&network.subnet, text).map_err(|why| {
                        Problem::new(
                            IP_OUT_OF_RANGE,
                            format!(
                                "spec.nics[{index}].ip on L3Network {:?}: {why}",
                                network.name
                            ),
                        )
                    })
                })
                .transpose()
        })
        .collect()
}

/// The MAC of a NIC holding `ip` on L2 network `l2network`: locally administered, unicast,
/// the address in its last four octets (as Docker does) and 14 bits of a hash of the L2
/// network's name in the first two. A MAC has to be unique within its broadcast domain, the
/// L2 network, and there it is by construction: every L3 network on one L2 shares the same
/// first two octets, and an address is held once (its IpAddress object) — two L3 networks
/// of one L2 handing out the same address would already clash at the IP layer. It is the
/// same on every retry, so no random state has to survive a crash. Across L2 networks a MAC
/// repeats only for the same address under a 14-bit hash collision, where it does no harm.
pub(crate) fn mac_for(l2network: &str, ip: Ipv4Addr) -> String {
    // FNV-1a: stable across releases and platforms, unlike std's hasher.
    let fnv = l2network.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    // MurmurHash3's finaliser, so names differing in their last letter differ in the top bits.
    let mut hash = fnv ^ (fnv >> 16);
    hash = hash.wrapping_mul(0x85eb_ca6b);
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(0xc2b2_ae35);
    hash ^= hash >> 16;
    let [h0, h1, ..] = hash.to_be_bytes();
    let first = (h0 & 0b1111_1100) | 0b10;
    let [a, b, c, d] = ip.octets();
    format!("{first:02x}:{h1:02x}:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// Gives every NIC of `vm` an address on its network: the static one it asks for, else the
/// one it already has, else the next free one. Addresses it holds but no longer uses (a NIC
/// removed, a static address changed, a reconcile that crashed before writing status) are
/// released afterwards. Returns `Ok(Err(problem))` when a static address is invalid or taken,
/// or a range is exhausted.
pub(crate) async fn allocate(
    ctx: &Context,
    vm: &VirtualMachine,
    networks: &[Network],
    current: &[VmNicStatus],
) -> Result<Result<Vec<VmNicStatus>, Problem>, Error> {
    let uid = vm.uid().unwrap_or_default();
    // Every static address is checked before anything is claimed.
    let wanted = match static_addresses(vm, networks) {
        Ok(wanted) => wanted,
        Err(problem) => return Ok(Err(problem)),
    };
    let mut nics = Vec::with_capacity(networks.len());
    let mut mine: BTreeSet<(String, Ipv4Addr)> = BTreeSet::new();
    for (index, (network, wanted)) in networks.iter().zip(wanted).enumerate() {
        let existing = current
            .get(index)
            .filter(|nic| nic.l3_network == network.name)
            .and_then(|nic| Some((nic.ip.parse::<Ipv4Addr>().ok()?, nic.mac.clone())));
        let kept = existing
            .as_ref()
            .filter(|(ip, _)| wanted.is_none_or(|w| w == *ip))
            .map(|(ip, _)| *ip);
        let ip = match (kept, wanted) {
            (Some(ip), _) => ip,
            (None, Some(ip)) => {
                if let Err(holder) = claim_static(ctx, vm, &uid, network, ip, &mine).await? {
                    return Ok(Err(Problem::new(
                        IP_CONFLICT,
                        format!(
                            "{ip} on L3Network {:?} (spec.nics[{index}].ip) is held by {holder}",
                            network.name
                        ),
                    )));
                }
                ip
            }
            (None, None) => match claim(ctx, vm, &uid, (index, network), &mine).await? {
                Some(ip) => ip,
                None => {
                    return Ok(Err(Problem::new(
                        IP_EXHAUSTED,
                        format!(
                            "L3Network {:?} has no free address in its {} addresses",
                            network.name,
                            network.subnet.size()
                        ),
                    )))
                }
            },
        };
        mine.insert((network.name.clone(), ip));
        // A NIC keeps its MAC as long as it keeps its address.
        let mac = existing
            .filter(|(old, _)| *old == ip)
            .map_or_else(|| mac_for(&network.l2.name, ip), |(_, mac)| mac);
        nics.push(VmNicStatus {
            l3_network: network.name.clone(),
            ip: ip.to_string(),
            mac,
        });
    }
    release_unused(ctx, vm, &uid, &mine).await?;
    Ok(Ok(nics))
}

/// Takes the static address `ip` on `network` for `vm`. Never takes it from another holder:
/// `Ok(Err(holder))` names who has it.
async fn claim_static(
    ctx: &Context,
    vm: &VirtualMachine,
    uid: &str,
    network: &Network,
    ip: Ipv4Addr,
    mine: &BTreeSet<(String, Ipv4Addr)>,
) -> Result<Result<(), String>, Error> {
    if mine.contains(&(network.name.clone(), ip)) {
        return Ok(Err("another NIC of the same VM".into()));
    }
    let api: Api<IpAddress> = Api::all(ctx.client.clone());
    let failed = |source| Error::AllocateIp {
        l3network: network.name.clone(),
        vm: vm_key(vm),
        source,
    };
    let object = address(vm, uid, &network.name, ip);
    match api.create(&PostParams::default(), &object).await {
        Ok(_) => Ok(Ok(())),
        Err(kube::Error::Api(status)) if status.is_already_exists() || status.code == 409 => {
            match api.get_opt(&object.name_any()).await.map_err(failed)? {
                // Ours already: an earlier reconcile claimed it before a crash.
                Some(existing) if existing.spec.owner_uid == uid => Ok(Ok(())),
                Some(existing) => Ok(Err(existing.spec.owner)),
                // Released in between: the next reconcile tries again.
                None => Ok(Err("another VM (just released; retrying)".into())),
            }
        }
        Err(source) => Err(failed(source)),
    }
}

/// Deletes the addresses `vm` holds but no NIC uses. The uid precondition makes sure an
/// address released and re-taken by another VM meanwhile is not deleted from under it.
async fn release_unused(
    ctx: &Context,
    vm: &VirtualMachine,
    uid: &str,
    mine: &BTreeSet<(String, Ipv4Addr)>,
) -> Result<(), Error> {
    let unused: Vec<_> = ctx
        .ips
        .state()
        .into_iter()
        .filter(|ip| ip.spec.owner_uid == uid)
        .filter(|ip| {
            ip.spec
                .address
                .parse::<Ipv4Addr>()
                .map_or(true, |a| !mine.contains(&(ip.spec.l3_network.clone(), a)))
        })
        .collect();
    let api: Api<IpAddress> = Api::all(ctx.client.clone());
    for ip in unused {
        let name = ip.name_any();
        let params = DeleteParams {
            preconditions: ip.uid().map(|uid| Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&name, &params).await {
            Ok(_) => {}
            // Gone already, or no longer the object we saw.
            Err(kube::Error::Api(status)) if status.is_not_found() || status.code == 409 => {}
            Err(source) => {
                return Err(Error::Delete {
                    kind: "IpAddress",
                    name: format!("{name} (held by {})", vm_key(vm)),
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Takes one address on `network` for `vm`: one it already holds but no NIC uses (left by a
/// reconcile that crashed before writing status), else the next free one from where this NIC's
/// search starts.
async fn claim(
    ctx: &Context,
    vm: &VirtualMachine,
    uid: &str,
    (index, network): (usize, &Network),
    mine: &BTreeSet<(String, Ipv4Addr)>,
) -> Result<Option<Ipv4Addr>, Error> {
    let on_network = ctx
        .ips
        .state()
        .into_iter()
        .filter(|ip| ip.spec.l3_network == network.name)
        .filter_map(|ip| {
            Some((
                ip.spec.address.parse::<Ipv4Addr>().ok()?,
                ip.spec.owner_uid == uid,
            ))
        })
        .collect::<Vec<_>>();
    let unused = |a: &Ipv4Addr| !mine.contains(&(network.name.clone(), *a));
    // Only a dynamic address inside the ranges is reused; a static one the VM no longer asks
    // for is released instead.
    let reusable = |a: &Ipv4Addr| check_static(&network.subnet, &a.to_string()).is_ok();
    if let Some((held, _)) = on_network
        .iter()
        .find(|(a, owned)| *owned && unused(a) && reusable(a))
    {
        return Ok(Some(*held));
    }
    let mut taken: BTreeSet<Ipv4Addr> = on_network.iter().map(|(a, _)| *a).collect();
    taken.extend(mine.iter().map(|(_, a)| *a));

    let api: Api<IpAddress> = Api::all(ctx.client.clone());
    let failed = |source| Error::AllocateIp {
        l3network: network.name.clone(),
        vm: vm_key(vm),
        source,
    };
    let start = search_start(uid, index);
    while let Some(candidate) = next_free(&network.subnet, &taken, start) {
        let object = address(vm, uid, &network.name, candidate);
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => return Ok(Some(candidate)),
            Err(kube::Error::Api(status)) if status.is_already_exists() || status.code == 409 => {
                let existing = api.get_opt(&object.name_any()).await.map_err(failed)?;
                if existing.is_some_and(|e| e.spec.owner_uid == uid) && unused(&candidate) {
                    return Ok(Some(candidate));
                }
                taken.insert(candidate);
            }
            Err(source) => return Err(failed(source)),
        }
    }
    Ok(None)
}

fn address(vm: &VirtualMachine, uid: &str, l3network: &str, ip: Ipv4Addr) -> IpAddress {
    let labels = [
        (LABEL_L3_NETWORK.to_string(), l3network.to_string()),
        (LABEL_OWNER_UID.to_string(), uid.to_string()),
    ];
    IpAddress {
        metadata: ObjectMeta {
            name: Some(IpAddress::object_name(l3network, ip)),
            labels: Some(labels.into_iter().collect()),
            ..ObjectMeta::default()
        },
        spec: IpAddressSpec {
            l3_network: l3network.to_string(),
            address: ip.to_string(),
            owner: vm_key(vm),
            owner_uid: uid.to_string(),
        },
    }
}

/// Deletes every IpAddress held by the object with uid `owner_uid` (a VM, an Eip or a recycled
/// root Volume), named `owner` in errors; addresses already gone are fine.
pub(crate) async fn release_owned(
    ctx: &Context,
    owner_uid: &str,
    owner: &str,
) -> Result<(), Error> {
    let api: Api<IpAddress> = Api::all(ctx.client.clone());
    for ip in held(&api, owner_uid, owner).await? {
        let name = ip.name_any();
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.is_not_found() => {}
            Err(source) => {
                return Err(Error::Delete {
                    kind: "IpAddress",
                    name,
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Hands every IpAddress held by the object with uid `from_uid` to `to` (`<namespace>/<name>`
/// and uid), keeping the addresses: a deleted VM's go to its recycled root volume, and back to
/// the VM that recovers it. Returns once the address cache shows the new holder, so the next
/// allocation finds the addresses its own.
pub(crate) async fn transfer(
    ctx: &Context,
    from_uid: &str,
    (owner, owner_uid): (&str, &str),
) -> Result<(), Error> {
    let api: Api<IpAddress> = Api::all(ctx.client.clone());
    let mut moved = Vec::new();
    for ip in held(&api, from_uid, owner).await? {
        let name = ip.name_any();
        let patch = json!({
            "metadata": {"labels": {LABEL_OWNER_UID: owner_uid}},
            "spec": {"owner": owner, "ownerUid": owner_uid},
        });
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|source| Error::Write {
                kind: "IpAddress",
                name: name.clone(),
                source,
            })?;
        moved.push(name);
    }
    let shown = || {
        moved.iter().all(|name| {
            ctx.ips
                .get(&ObjectRef::new(name))
                .is_some_and(|ip| ip.spec.owner_uid == owner_uid)
        })
    };
    for _ in 0..CACHE_WAIT_STEPS {
        if shown() {
            return Ok(());
        }
        tokio::time::sleep(CACHE_WAIT_STEP).await;
    }
    Err(Error::Waiting {
        what: format!("the addresses handed to {owner}"),
        until: "the address cache to show them",
    })
}

/// How long `transfer` waits for the address cache, in steps.
const CACHE_WAIT_STEPS: u32 = 50;
const CACHE_WAIT_STEP: std::time::Duration = std::time::Duration::from_millis(100);

async fn held(api: &Api<IpAddress>, owner_uid: &str, owner: &str) -> Result<Vec<IpAddress>, Error> {
    let selector = format!("{LABEL_OWNER_UID}={owner_uid}");
    api.list(&ListParams::default().labels(&selector))
        .await
        .map(|list| list.items)
        .map_err(|source| Error::List {
            kind: "IpAddress",
            owner: owner.to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use strata_apis::{IpRange, L3NetworkSpec};

    use super::*;

    fn subnet(cidr: &str, gateway: &str, start: &str, end: &str) -> Subnet {
        L3NetworkSpec {
            cidr: cidr.into(),
            gateway: gateway.into(),
            ip_ranges: vec![IpRange {
                start: start.into(),
                end: end.into(),
            }],
            ..L3NetworkSpec::default()
        }
        .subnet()
        .expect("valid subnet")
    }

    fn ips(list: &[&str]) -> BTreeSet<Ipv4Addr> {
        list.iter().map(|a| a.parse().expect("address")).collect()
    }

    #[test]
    fn hands_out_the_lowest_free_address() {
        let s = subnet("10.0.0.0/24", "10.0.0.1", "10.0.0.10", "10.0.0.20");
        assert_eq!(
            next_free(&s, &ips(&[]), 0),
            Some("10.0.0.10".parse().unwrap())
        );
        assert_eq!(
            next_free(&s, &ips(&["10.0.0.10", "10.0.0.11", "10.0.0.13"]), 0),
            Some("10.0.0.12".parse().unwrap())
        );
    }

    #[test]
    fn the_search_starts_where_the_nic_hashes_to_and_wraps_around() {
        let mut s = subnet("10.0.0.0/24", "10.0.0.1", "10.0.0.10", "10.0.0.12");
        s.ranges
            .push(("10.0.0.100".parse().unwrap(), "10.0.0.101".parse().unwrap()));
        let ip = |a: &str| Some(a.parse::<Ipv4Addr>().unwrap());
        assert_eq!(next_free(&s, &ips(&[]), 3), ip("10.0.0.100"));
        assert_eq!(next_free(&s, &ips(&["10.0.0.100"]), 3), ip("10.0.0.101"));
        assert_eq!(
            next_free(&s, &ips(&["10.0.0.100", "10.0.0.101"]), 3),
            ip("10.0.0.10"),
            "wraps to the first range"
        );
        assert_eq!(
            next_free(&s, &ips(&[]), 5 + 2),
            ip("10.0.0.12"),
            "modulo the size"
        );
        // Stable per VM and NIC, different across them.
        assert_eq!(search_start("uid-1", 0), search_start("uid-1", 0));
        assert_ne!(search_start("uid-1", 0), search_start("uid-1", 1));
        assert_ne!(search_start("uid-1", 0), search_start("uid-2", 0));
        // Spread: 100 VMs over 1000 addresses land on many different starting points.
        let starts: BTreeSet<u64> = (0..100)
            .map(|i| search_start(&format!("uid-{i}"), 0) % 1000)
            .collect();
        assert!(starts.len() > 90, "{}", starts.len());
    }

    #[test]
    fn an_exhausted_range_has_nothing_left() {
        let s = subnet("10.0.0.0/24", "10.0.0.1", "10.0.0.10", "10.0.0.12");
        assert_eq!(
            next_free(&s, &ips(&["10.0.0.10", "10.0.0.11", "10.0.0.12"]), 7),
            None
        );
    }

    #[test]
    fn never_hands_out_network_broadcast_or_gateway() {
        // A range cannot include them (validation refuses it), but a hand-built subnet can.
        let mut s = subnet("10.0.0.0/30", "10.0.0.1", "10.0.0.2", "10.0.0.2");
        s.ranges = vec![("10.0.0.0".parse().unwrap(), "10.0.0.3".parse().unwrap())];
        assert_eq!(
            next_free(&s, &ips(&[]), 0),
            Some("10.0.0.2".parse().unwrap())
        );
        assert_eq!(next_free(&s, &ips(&["10.0.0.2"]), 3), None);
    }

    #[test]
    fn macs_are_locally_administered_unicast_and_follow_network_and_address() {
        let ip = |a: &str| a.parse::<Ipv4Addr>().unwrap();
        let mac = mac_for("net-1", ip("10.0.3.250"));
        assert!(mac.ends_with(":0a:00:03:fa"), "{mac}");
        assert_eq!(mac.len(), 17);
        let first = u8::from_str_radix(&mac[..2], 16).unwrap();
        assert_eq!(first & 0b10, 0b10, "locally administered");
        assert_eq!(first & 0b01, 0, "unicast");
        assert_eq!(mac, mac_for("net-1", ip("10.0.3.250")), "stable");
        assert_ne!(mac, mac_for("net-1", ip("10.0.3.251")));
        // The same address on two L2 networks (overlapping private ranges) gets two MACs.
        assert_ne!(mac, mac_for("net-2", ip("10.0.3.250")));
        // Pinned value: changing the hash would change every new NIC's MAC.
        assert_eq!(mac_for("a", ip("1.2.3.4")), "1a:80:01:02:03:04");
    }

    #[test]
    fn every_address_of_a_network_gets_a_different_mac() {
        let s = subnet("10.0.0.0/16", "10.0.0.1", "10.0.0.2", "10.0.255.254");
        let macs: BTreeSet<String> = s.addresses().map(|a| mac_for("net", a)).collect();
        assert_eq!(macs.len() as u64, s.size());
    }

    #[test]
    fn a_static_address_must_be_inside_a_range_and_not_the_gateway() {
        let mut s = subnet("10.0.0.0/24", "10.0.0.1", "10.0.0.10", "10.0.0.20");
        s.ranges
            .push(("10.0.0.100".parse().unwrap(), "10.0.0.100".parse().unwrap()));
        assert_eq!(
            check_static(&s, "10.0.0.10"),
            Ok("10.0.0.10".parse().unwrap())
        );
        assert_eq!(
            check_static(&s, "10.0.0.20"),
            Ok("10.0.0.20".parse().unwrap())
        );
        assert_eq!(
            check_static(&s, "10.0.0.100"),
            Ok("10.0.0.100".parse().unwrap())
        );
        assert_eq!(
            check_static(&s, "10.0.0.1"),
            Err("10.0.0.1 is the gateway".into())
        );
        assert_eq!(
            check_static(&s, "10.0.0.21"),
            Err(
                "10.0.0.21 is outside the ranges 10.0.0.10-10.0.0.20, 10.0.0.100-10.0.0.100".into()
            )
        );
        assert_eq!(
            check_static(&s, "10.0.1.10"),
            Err(
                "10.0.1.10 is outside the ranges 10.0.0.10-10.0.0.20, 10.0.0.100-10.0.0.100".into()
            )
        );
        assert_eq!(
            check_static(&s, "10.0.0.255"),
            Err("10.0.0.255 is not a host address of 10.0.0.0/24".into())
        );
        assert_eq!(
            check_static(&s, "10.0.0"),
            Err("\"10.0.0\" is not an IPv4 address".into())
        );
    }

    #[test]
    fn static_addresses_are_checked_per_nic_before_anything_is_claimed() {
        use strata_apis::{VirtualMachineSpec, VmNic};
        let network = |name: &str| Network {
            name: name.into(),
            subnet: subnet("10.0.0.0/24", "10.0.0.1", "10.0.0.10", "10.0.0.20"),
            dns: vec![],
            dns_domain: None,
            l2: strata_apis::VmiL2Network::default(),
        };
        let vm = |ips: [Option<&str>; 2]| {
            VirtualMachine::new(
                "vm",
                VirtualMachineSpec {
                    nics: ips
                        .iter()
                        .map(|ip| VmNic {
                            l3_network: "net".into(),
                            ip: ip.map(str::to_string),
                            ..VmNic::default()
                        })
                        .collect(),
                    ..VirtualMachineSpec::default()
                },
            )
        };
        let networks = [network("a"), network("b")];
        assert_eq!(
            static_addresses(&vm([None, Some("10.0.0.15")]), &networks),
            Ok(vec![None, Some("10.0.0.15".parse().unwrap())])
        );
        let problem = static_addresses(&vm([None, Some("10.0.0.1")]), &networks).unwrap_err();
        assert_eq!(problem.reason, "IPOutOfRange");
        assert_eq!(
            problem.message,
            "spec.nics[1].ip on L3Network \"b\": 10.0.0.1 is the gateway"
        );
    }
}
