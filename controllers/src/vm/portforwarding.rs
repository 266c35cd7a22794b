//! PortForwarding controller: the shared VIP controller ([`super::vip`]) for PortForwardings,
//! which DNAT ports of their VIP to the bound NIC. [`resolve`] carries each NIC's
//! PortForwardings into the VM's instance.

use strata_apis::{PortForwarding, VirtualMachine, VmNicRef, VmiPortForwarding};

use super::vip::{self, VipHolder, VipStatus};
use crate::{Context, Error};

impl VipHolder for PortForwarding {
    const KIND: &'static str = "PortForwarding";
    const FINALIZER: &'static str = "strata.io/portforwarding-release";

    fn l3_network(&self) -> &str {
        &self.spec.l3_network
    }

    fn wanted_vip(&self) -> Option<&str> {
        self.spec.vip.as_deref()
    }

    fn vm_nic(&self) -> Option<&VmNicRef> {
        self.spec.vm_nic.as_ref()
    }

    fn vip_status(&self) -> VipStatus {
        let s = self.status.clone().unwrap_or_default();
        VipStatus {
            observed_generation: s.observed_generation,
            vip: s.vip,
            guest_ip: s.guest_ip,
            host: s.host,
            conditions: s.conditions,
        }
    }
}

/// The PortForwardings of each of `vm`'s NICs that have a VIP, by name.
pub(crate) async fn resolve(
    ctx: &Context,
    vm: &VirtualMachine,
) -> Result<Vec<Vec<VmiPortForwarding>>, Error> {
    let mut out = vec![Vec::new(); vm.spec.nics.len()];
    for bound in vip::bound_to::<PortForwarding>(ctx, vm).await? {
        let spec = &bound.object.spec;
        if let Some(nic) = out.get_mut(bound.nic) {
            nic.push(VmiPortForwarding {
                public: bound.public,
                protocol: spec.protocol,
                external_ports: spec.external_ports,
                internal_ports: spec.internal_ports,
                allowed_cidr: spec.allowed_cidr.clone(),
            });
        }
    }
    Ok(out)
}
