//! Address allocation. Each address is an IpAddress object whose name is derived from the
//! network and the address, so creating it *is* the allocation: the API server refuses a
//! second object of that name. The cache only suggests which addresses are free.

use std::{collections::BTreeSet, net::Ipv4Addr};

use kube::{
    api::{ObjectMeta, PostParams},
    Api, ResourceExt,
};
use strata_apis::{
    condition::LABEL_L3_NETWORK, l3network::Subnet, IpAddress, IpAddressSpec, VirtualMachine,
    VmNicStatus,
};

use super::{vm_key, Network, Problem};
use crate::{Context, Error};

/// Label on IpAddress objects naming the uid of the VM holding them, so a VM's addresses can be
/// found and released without scanning every network.
pub(crate) const LABEL_OWNER_UID: &str = "strata.io/owner-uid";

/// The lowest address of the range that is not taken. The network, broadcast and gateway
/// addresses are never handed out, whatever the range says.
pub(crate) fn next_free(subnet: &Subnet, taken: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let reserved = [subnet.net.network(), subnet.net.broadcast(), subnet.gateway];
    subnet
        .addresses()
        .find(|a| !taken.contains(a) && !reserved.contains(a) && subnet.net.contains(a))
}

/// The MAC of a NIC holding `ip`: locally administered, unicast, and carrying the address in
/// its last four octets (as Docker does). It is unique wherever the address is, and it is the
/// same on every retry, so no random state has to survive a crash.
pub(crate) fn mac_for(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("fa:16:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// Gives every NIC of `vm` an address on its network, keeping the ones it already has.
/// Returns `Ok(Err(problem))` when a range is exhausted.
pub(crate) async fn allocate(
    ctx: &Context,
    vm: &VirtualMachine,
    networks: &[Network],
    current: &[VmNicStatus],
) -> Result<Result<Vec<VmNicStatus>, Problem>, Error> {
    let uid = vm.uid().unwrap_or_default();
    let mut nics = Vec::with_capacity(networks.len());
    let mut mine: BTreeSet<(String, Ipv4Addr)> = BTreeSet::new();
    for (index, network) in networks.iter().enumerate() {
        let kept = current
            .get(index)
            .filter(|nic| nic.l3_network == network.name)
            .and_then(|nic| nic.ip.parse::<Ipv4Addr>().ok());
        let ip = match kept {
            Some(ip) => ip,
            None => match claim(ctx, vm, &uid, network, &mine).await? {
                Some(ip) => ip,
                None => {
                    return Ok(Err(Problem::new(
                        "IPRangeExhausted",
                        format!("L3Network {:?} has no free address", network.name),
                    )))
                }
            },
        };
        mine.insert((network.name.clone(), ip));
        nics.push(VmNicStatus {
            l3_network: network.name.clone(),
            ip: ip.to_string(),
            mac: mac_for(ip),
        });
    }
    Ok(Ok(nics))
}

/// Takes one address on `network` for `vm`: one it already holds but no NIC uses (left by a
/// reconcile that crashed before writing status), else the next free one.
async fn claim(
    ctx: &Context,
    vm: &VirtualMachine,
    uid: &str,
    network: &Network,
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
    if let Some((held, _)) = on_network.iter().find(|(a, owned)| *owned && unused(a)) {
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
    while let Some(candidate) = next_free(&network.subnet, &taken) {
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
        assert_eq!(next_free(&s, &ips(&[])), Some("10.0.0.10".parse().unwrap()));
        assert_eq!(
            next_free(&s, &ips(&["10.0.0.10", "10.0.0.11", "10.0.0.13"])),
            Some("10.0.0.12".parse().unwrap())
        );
    }

    #[test]
    fn an_exhausted_range_has_nothing_left() {
        let s = subnet("10.0.0.0/24", "10.0.0.1", "10.0.0.10", "10.0.0.12");
        assert_eq!(
            next_free(&s, &ips(&["10.0.0.10", "10.0.0.11", "10.0.0.12"])),
            None
        );
    }

    #[test]
    fn never_hands_out_network_broadcast_or_gateway() {
        // A range cannot include them (validation refuses it), but a hand-built subnet can.
        let mut s = subnet("10.0.0.0/30", "10.0.0.1", "10.0.0.2", "10.0.0.2");
        s.ranges = vec![("10.0.0.0".parse().unwrap(), "10.0.0.3".parse().unwrap())];
        assert_eq!(next_free(&s, &ips(&[])), Some("10.0.0.2".parse().unwrap()));
        assert_eq!(next_free(&s, &ips(&["10.0.0.2"])), None);
    }

    #[test]
    fn macs_are_locally_administered_unicast_and_follow_the_address() {
        let mac = mac_for("10.0.3.250".parse().unwrap());
        assert_eq!(mac, "fa:16:0a:00:03:fa");
        let first = u8::from_str_radix(&mac[..2], 16).unwrap();
        assert_eq!(first & 0b10, 0b10, "locally administered");
        assert_eq!(first & 0b01, 0, "unicast");
        assert_ne!(mac, mac_for("10.0.3.251".parse().unwrap()));
    }
}
