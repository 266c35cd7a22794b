//! Eip controller: the shared VIP controller ([`super::vip`]) for Eips, which NAT their VIP
//! one-to-one to the bound NIC. [`resolve`] carries each NIC's Eip into the VM's instance.

use strata_apis::{Eip, VirtualMachine, VmNicRef, VmiEip};

use super::vip::{self, VipHolder, VipStatus};
use crate::{Context, Error};

impl VipHolder for Eip {
    const KIND: &'static str = "Eip";
    const FINALIZER: &'static str = "strata.io/eip-release";

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

/// The Eip of each of `vm`'s NICs: the first by name of those bound to it that have a VIP.
pub(crate) async fn resolve(
    ctx: &Context,
    vm: &VirtualMachine,
) -> Result<Vec<Option<VmiEip>>, Error> {
    let mut out = vec![None; vm.spec.nics.len()];
    for bound in vip::bound_to::<Eip>(ctx, vm).await? {
        if let Some(slot @ None) = out.get_mut(bound.nic) {
            *slot = Some(bound.public);
        }
    }
    Ok(out)
}
