//! What a domain is, in Strata's terms, and how it becomes libvirt XML.
//!
//! [`DomainSpec`] is the driver's input: sizes, boot method, disks, NICs, console log, VNC.
//! [`HostFeatures`] is what the host can do (KVM or only TCG, vhost-net); it is detected once,
//! because libvirt's capabilities cannot be trusted for it (they list `kvm` on machines where a
//! KVM guest dies at its first `cmpxchg16b`).

use std::path::{Path, PathBuf};

use crate::{xml, Error};

/// How guests are accelerated on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization: libvirt domain type `kvm`, host CPU model.
    Kvm,
    /// QEMU's binary translator: libvirt domain type `qemu`. Slow but works everywhere.
    Tcg,
}

impl Accel {
    /// The environment variable that overrides detection: `kvm` or `qemu`/`tcg`.
    pub const ENV: &'static str = "STRATA_VIRT_TYPE";

    /// KVM only when `/dev/kvm` exists *and* the CPU advertises VT-x or AMD-V: a `/dev/kvm`
    /// alone can be a PVM backend that standard guest kernels crash on. `STRATA_VIRT_TYPE`
    /// overrides both ways.
    pub fn detect() -> Accel {
        match std::env::var(Self::ENV).ok().as_deref() {
            Some("kvm") => return Accel::Kvm,
            Some("qemu" | "tcg") => return Accel::Tcg,
            _ => {}
        }
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Self::from_probe(Path::new("/dev/kvm").exists(), &cpuinfo)
    }

    /// The pure part of [`Accel::detect`].
    pub fn from_probe(dev_kvm: bool, cpuinfo: &str) -> Accel {
        let hw = cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
        if dev_kvm && hw {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }

    /// The libvirt domain type.
    pub fn domain_type(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "qemu",
        }
    }
}

/// What the host offers guests; decides details of the generated XML.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFeatures {
    pub accel: Accel,
    /// Without `/dev/vhost-net` virtio-net must run in QEMU's userspace (`<driver name='qemu'/>`).
    pub vhost_net: bool,
}

impl HostFeatures {
    pub fn detect() -> Self {
        Self {
            accel: Accel::detect(),
            vhost_net: Path::new("/dev/vhost-net").exists(),
        }
    }
}

/// Who created a domain; written into its `<metadata>` so a domain on a shared libvirtd can be
/// traced back to the agent and instance that own it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub host: String,
    pub instance: String,
}

/// How the guest boots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Boot {
    /// From the first disk's boot loader.
    Disk,
    /// QEMU loads the kernel (and initrd) itself: no boot loader, no disk needed.
    Kernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: String,
    },
}

/// The on-disk format of a volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskFormat {
    Qcow2,
    Raw,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "qcow2" => Some(DiskFormat::Qcow2),
            "raw" => Some(DiskFormat::Raw),
            _ => None,
        }
    }
}

/// A virtio disk backed by a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    pub path: PathBuf,
    pub format: DiskFormat,
    /// Guest device name: `vda`, `vdb`, ... (see [`disk_target`]).
    pub target: String,
    /// Shown to the guest as the disk's serial number (`/dev/disk/by-id/virtio-<serial>`).
    pub serial: Option<String>,
}

impl Disk {
    /// The `<disk>` element, also used on its own for live attach and detach.
    pub fn to_xml(&self) -> xml::DiskXml {
        xml::DiskXml {
            disk_type: "file".into(),
            device: "disk".into(),
            driver: xml::DiskDriver {
                name: "qemu".into(),
                format: self.format.as_str().into(),
            },
            source: xml::DiskSource {
                file: self.path.display().to_string(),
            },
            target: xml::DiskTarget {
                dev: self.target.clone(),
                bus: "virtio".into(),
            },
            serial: self.serial.clone(),
        }
    }
}

/// The guest name of the `index`th virtio disk: `vda` … `vdz`, then `vdaa` ….
pub fn disk_target(index: usize) -> String {
    let mut suffix = String::new();
    let mut n = index + 1;
    while n > 0 {
        let rem = (n - 1) % 26;
        suffix.insert(0, char::from(b'a' + rem as u8));
        n = (n - 1) / 26;
    }
    format!("vd{suffix}")
}

/// A virtio NIC on a Linux bridge. The network driver owns bridge and tap names; the tap name
/// is fixed (not libvirt's `vnetN`) so security-group rules can name it before the guest starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nic {
    pub mac: String,
    pub bridge: String,
    pub tap: Option<String>,
}

/// Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

/// Everything the hypervisor needs to define a domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainSpec {
    /// Unique on the host.
    pub name: String,
    pub owner: Option<Owner>,
    pub vcpus: u32,
    pub memory_bytes: u64,
    pub boot: Boot,
    pub disks: Vec<Disk>,
    pub nics: Vec<Nic>,
    /// virtlogd appends the serial console (ttyS0) here, across restarts of the domain.
    pub serial_log: Option<PathBuf>,
    /// A VNC display on 127.0.0.1 with a port libvirt picks.
    pub vnc: bool,
}

impl DomainSpec {
    /// Checks what libvirt would otherwise reject late or, worse, accept wrongly.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |what, value: &str, reason| Error::Invalid {
            what,
            value: value.to_string(),
            reason,
        };
        validate_name(&self.name)?;
        if self.vcpus == 0 {
            return Err(invalid("vcpus", "0", "a domain needs at least one vCPU"));
        }
        if self.memory_bytes < 16 << 20 {
            return Err(invalid(
                "memory",
                &self.memory_bytes.to_string(),
                "less than 16 MiB cannot boot a guest",
            ));
        }
        for nic in &self.nics {
            if !is_mac(&nic.mac) {
                return Err(invalid(
                    "MAC address",
                    &nic.mac,
                    "expected xx:xx:xx:xx:xx:xx",
                ));
            }
            for name in std::iter::once(&nic.bridge).chain(nic.tap.as_ref()) {
                if name.is_empty() || name.len() > MAX_IFNAME || name.contains(['/', ' ']) {
                    return Err(invalid(
                        "interface name",
                        name,
                        "1-15 bytes without '/' or spaces",
                    ));
                }
            }
        }
        let mut targets: Vec<&str> = self.disks.iter().map(|d| d.target.as_str()).collect();
        targets.sort_unstable();
        if targets.windows(2).any(|w| w[0] == w[1]) {
            return Err(invalid(
                "disk targets",
                &targets.join(","),
                "two disks share a target",
            ));
        }
        Ok(())
    }

    /// The domain document for this host.
    pub fn to_xml(&self, host: &HostFeatures) -> Result<xml::DomainXml, Error> {
        self.validate()?;
        let path = |p: &Path| p.display().to_string();
        let (kernel, initrd, cmdline, boot) = match &self.boot {
            Boot::Disk => (None, None, None, vec![xml::BootDev { dev: "hd".into() }]),
            Boot::Kernel {
                kernel,
                initrd,
                cmdline,
            } => (
                Some(path(kernel)),
                initrd.as_deref().map(path),
                Some(cmdline.clone()),
                vec![],
            ),
        };
        let tcg = host.accel == Accel::Tcg;
        Ok(xml::DomainXml {
            virt_type: host.accel.domain_type().into(),
            name: self.name.clone(),
            uuid: None,
            metadata: self.owner.as_ref().map(|o| xml::MetadataXml {
                owner: xml::OwnerXml {
                    xmlns: xml::METADATA_NS.into(),
                    host: o.host.clone(),
                    instance: o.instance.clone(),
                },
            }),
            memory: xml::Memory {
                unit: "KiB".into(),
                value: self.memory_bytes.div_ceil(1024),
            },
            vcpu: self.vcpus,
            os: xml::Os {
                os_type: xml::OsType {
                    arch: "x86_64".into(),
                    // i440fx: ACPI PCI hot-plug of virtio disks works without extra root ports.
                    machine: "pc".into(),
                    value: "hvm".into(),
                },
                kernel,
                initrd,
                cmdline,
                boot,
            },
            features: xml::Features {
                acpi: Some(xml::Empty {}),
                apic: Some(xml::Empty {}),
                tcg: tcg.then(|| xml::Tcg {
                    tb_cache: xml::Memory {
                        unit: "MiB".into(),
                        value: 32,
                    },
                }),
            },
            cpu: (!tcg).then(|| xml::Cpu {
                mode: "host-passthrough".into(),
            }),
            clock: xml::Clock {
                offset: "utc".into(),
            },
            // A guest that powers off stays defined (stopped), so the agent sees it and acts by
            // the VM's run strategy; a guest reboot restarts in place.
            on_poweroff: "destroy".into(),
            on_reboot: "restart".into(),
            on_crash: "destroy".into(),
            devices: xml::Devices {
                emulator: None,
                disk: self.disks.iter().map(Disk::to_xml).collect(),
                controller: vec![xml::Controller {
                    controller_type: "usb".into(),
                    model: "none".into(),
                }],
                interface: self
                    .nics
                    .iter()
                    .map(|nic| xml::InterfaceXml {
                        interface_type: "bridge".into(),
                        source: xml::BridgeSource {
                            bridge: nic.bridge.clone(),
                        },
                        mac: xml::MacXml {
                            address: nic.mac.to_ascii_lowercase(),
                        },
                        model: xml::ModelXml {
                            model_type: "virtio".into(),
                        },
                        driver: (!host.vhost_net).then(|| xml::NicDriver {
                            name: "qemu".into(),
                        }),
                        target: nic
                            .tap
                            .as_ref()
                            .map(|dev| xml::NicTarget { dev: dev.clone() }),
                    })
                    .collect(),
                serial: vec![xml::Serial {
                    serial_type: "pty".into(),
                    log: self.serial_log.as_deref().map(|p| xml::SerialLog {
                        file: path(p),
                        append: "on".into(),
                    }),
                    target: xml::SerialTarget { port: 0 },
                }],
                console: vec![xml::Console {
                    console_type: "pty".into(),
                    target: xml::ConsoleTarget {
                        target_type: "serial".into(),
                        port: 0,
                    },
                }],
                graphics: if self.vnc {
                    vec![xml::Graphics {
                        graphics_type: "vnc".into(),
                        port: -1,
                        autoport: "yes".into(),
                        listen: "127.0.0.1".into(),
                    }]
                } else {
                    vec![]
                },
                memballoon: Some(xml::Memballoon {
                    model: "none".into(),
                }),
            },
        })
    }
}

/// Domain, volume and snapshot names become file names and libvirt names: keep them tame.
pub fn validate_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid {
            what: "name",
            value: name.to_string(),
            reason: "1-200 of [A-Za-z0-9._-], not starting with '.' or '-'",
        })
    }
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> DomainSpec {
        DomainSpec {
            name: "ns.vm-1".into(),
            owner: Some(Owner {
                host: "host-1".into(),
                instance: "ns/vm-1".into(),
            }),
            vcpus: 1,
            memory_bytes: 128 << 20,
            boot: Boot::Kernel {
                kernel: "/img/vmlinuz".into(),
                initrd: Some("/img/initrd.img".into()),
                cmdline: "console=ttyS0 strata.name=<vm & 'x'>".into(),
            },
            disks: vec![Disk {
                path: "/ps/volumes/root.qcow2".into(),
                format: DiskFormat::Qcow2,
                target: disk_target(0),
                serial: Some("root".into()),
            }],
            nics: vec![Nic {
                mac: "52:54:00:AA:00:01".into(),
                bridge: "br-l2".into(),
                tap: Some("tap-abc".into()),
            }],
            serial_log: Some("/state/ns.vm-1/console.log".into()),
            vnc: true,
        }
    }

    const TCG: HostFeatures = HostFeatures {
        accel: Accel::Tcg,
        vhost_net: false,
    };

    #[test]
    fn detects_kvm_only_with_the_device_and_cpu_flags() {
        let flags = "processor\t: 0\nflags\t\t: fpu vme sse2 vmx ssse3\n";
        assert_eq!(Accel::from_probe(true, flags), Accel::Kvm);
        assert_eq!(Accel::from_probe(false, flags), Accel::Tcg);
        assert_eq!(
            Accel::from_probe(true, "flags\t\t: fpu vme sse2 ssse3 hypervisor\n"),
            Accel::Tcg,
            "a /dev/kvm without VT-x/AMD-V (PVM) is not usable"
        );
        assert_eq!(Accel::from_probe(true, "flags : svm\n"), Accel::Kvm);
    }

    #[test]
    fn tcg_domain_xml_has_the_devices_strata_relies_on() {
        let doc = xml::to_string(&spec().to_xml(&TCG).expect("valid")).expect("serializes");
        for needle in [
            "<domain type=\"qemu\">",
            "<name>ns.vm-1</name>",
            "<memory unit=\"KiB\">131072</memory>",
            "<kernel>/img/vmlinuz</kernel>",
            // escaped, not injected
            "<cmdline>console=ttyS0 strata.name=&lt;vm &amp; &apos;x&apos;&gt;</cmdline>",
            "<acpi/>",
            "<tb-cache unit=\"MiB\">32</tb-cache>",
            "<on_reboot>restart</on_reboot>",
            "<source file=\"/ps/volumes/root.qcow2\"/><target dev=\"vda\" bus=\"virtio\"/>",
            "<source bridge=\"br-l2\"/><mac address=\"52:54:00:aa:00:01\"/>",
            "<driver name=\"qemu\"/><target dev=\"tap-abc\"/>",
            "<log file=\"/state/ns.vm-1/console.log\" append=\"on\"/>",
            "<graphics type=\"vnc\" port=\"-1\" autoport=\"yes\" listen=\"127.0.0.1\"/>",
            "<strata:owner xmlns:strata=\"https://strata.io/xmlns/libvirt/domain/1\" host=\"host-1\" instance=\"ns/vm-1\"/>",
        ] {
            assert!(
                doc.contains(&needle.replace("&apos;", "'"))
                    || doc.contains(needle),
                "missing {needle} in {doc}"
            );
        }
        assert!(!doc.contains("<cpu"), "TCG keeps QEMU's default CPU model");
        assert!(!doc.contains("<boot"), "direct boot needs no boot device");
    }

    #[test]
    fn kvm_with_vhost_uses_the_host_cpu_and_kernel_virtio() {
        let host = HostFeatures {
            accel: Accel::Kvm,
            vhost_net: true,
        };
        let mut s = spec();
        s.boot = Boot::Disk;
        s.vnc = false;
        let doc = xml::to_string(&s.to_xml(&host).expect("valid")).expect("serializes");
        assert!(doc.starts_with("<domain type=\"kvm\">"), "{doc}");
        assert!(doc.contains("<cpu mode=\"host-passthrough\"/>"), "{doc}");
        assert!(doc.contains("<boot dev=\"hd\"/>"), "{doc}");
        assert!(!doc.contains("<driver name=\"qemu\"/>"), "{doc}");
        assert!(
            !doc.contains("tb-cache") && !doc.contains("graphics"),
            "{doc}"
        );
    }

    #[test]
    fn rejects_what_libvirt_or_the_kernel_would() {
        let mut s = spec();
        s.nics[0].tap = Some("tap-much-too-long".into());
        assert!(matches!(
            s.validate(),
            Err(Error::Invalid {
                what: "interface name",
                ..
            })
        ));
        let mut s = spec();
        s.nics[0].mac = "52:54:00:aa:00".into();
        assert!(s.validate().is_err());
        let mut s = spec();
        s.name = "../etc".into();
        assert!(s.validate().is_err());
        let mut s = spec();
        s.disks.push(s.disks[0].clone());
        assert!(s.validate().is_err());
        let mut s = spec();
        s.memory_bytes = 1 << 20;
        assert!(s.validate().is_err());
    }

    #[test]
    fn disk_targets_count_like_libvirt() {
        assert_eq!(disk_target(0), "vda");
        assert_eq!(disk_target(1), "vdb");
        assert_eq!(disk_target(25), "vdz");
        assert_eq!(disk_target(26), "vdaa");
    }

    #[test]
    fn the_owner_reads_back_from_libvirts_metadata_element() {
        let stored = "<strata:owner xmlns:strata=\"https://strata.io/xmlns/libvirt/domain/1\" host=\"h\" instance=\"ns/a\"/>";
        let owner: xml::OwnerXml = xml::from_str(stored).expect("parses");
        assert_eq!(
            (owner.host.as_str(), owner.instance.as_str()),
            ("h", "ns/a")
        );
    }
}
