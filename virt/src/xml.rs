//! libvirt domain XML as typed structs, serialized with quick-xml's serde support.
//!
//! Only the elements Strata uses are modelled. Building the document from structs (rather than
//! by formatting strings) means a name or path with `'`, `<` or `&` is escaped, never injected,
//! and the unit tests can assert on fields instead of on text. quick-xml's conventions: a field
//! named `@x` is an attribute, `$text` is the element's text, `Option::None` and empty `Vec`s are
//! left out.

use serde::{Deserialize, Serialize};

use crate::Error;

/// The XML namespace of Strata's `<metadata>` element.
pub const METADATA_NS: &str = "https://strata.io/xmlns/libvirt/domain/1";
/// The prefix libvirt writes Strata's metadata element with.
pub const METADATA_PREFIX: &str = "strata";

/// An empty element such as `<acpi/>`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Empty {}

/// `<domain>`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename = "domain")]
pub struct DomainXml {
    /// `kvm` or `qemu` (TCG).
    #[serde(rename = "@type")]
    pub virt_type: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub uuid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub metadata: Option<MetadataXml>,
    pub memory: Memory,
    pub vcpu: u32,
    pub os: Os,
    pub features: Features,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cpu: Option<Cpu>,
    pub clock: Clock,
    pub on_poweroff: String,
    pub on_reboot: String,
    pub on_crash: String,
    pub devices: Devices,
}

/// `<metadata>` holding Strata's own element, which records who owns the domain.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct MetadataXml {
    #[serde(rename = "strata:owner")]
    pub owner: OwnerXml,
}

/// `<strata:owner host=".." instance=".."/>`: which agent created the domain, for which instance.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct OwnerXml {
    #[serde(rename = "@xmlns:strata", default, skip_deserializing)]
    pub xmlns: String,
    #[serde(rename = "@host")]
    pub host: String,
    #[serde(rename = "@instance")]
    pub instance: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Memory {
    #[serde(rename = "@unit")]
    pub unit: String,
    #[serde(rename = "$text")]
    pub value: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Os {
    #[serde(rename = "type")]
    pub os_type: OsType,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub kernel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub initrd: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cmdline: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub boot: Vec<BootDev>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct OsType {
    #[serde(rename = "@arch")]
    pub arch: String,
    #[serde(rename = "@machine")]
    pub machine: String,
    #[serde(rename = "$text")]
    pub value: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BootDev {
    #[serde(rename = "@dev")]
    pub dev: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct Features {
    /// Needed for the ACPI power button (graceful shutdown) and PCI hot-plug.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub acpi: Option<Empty>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub apic: Option<Empty>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tcg: Option<Tcg>,
}

/// TCG tuning: a 32 MiB translation cache instead of QEMU's default cuts ~30 MB of RSS per guest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Tcg {
    #[serde(rename = "tb-cache")]
    pub tb_cache: Memory,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Cpu {
    #[serde(rename = "@mode")]
    pub mode: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Clock {
    #[serde(rename = "@offset")]
    pub offset: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct Devices {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub emulator: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub disk: Vec<DiskXml>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub controller: Vec<Controller>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub interface: Vec<InterfaceXml>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub serial: Vec<Serial>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub console: Vec<Console>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub graphics: Vec<Graphics>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub memballoon: Option<Memballoon>,
}

/// `<disk type='file' device='disk'>`. Also the document for live attach and detach.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename = "disk")]
pub struct DiskXml {
    #[serde(rename = "@type")]
    pub disk_type: String,
    #[serde(rename = "@device")]
    pub device: String,
    pub driver: DiskDriver,
    pub source: DiskSource,
    pub target: DiskTarget,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub serial: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DiskDriver {
    #[serde(rename = "@name")]
    pub name: String,
    #[serde(rename = "@type")]
    pub format: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DiskSource {
    #[serde(rename = "@file")]
    pub file: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskTarget {
    #[serde(rename = "@dev")]
    pub dev: String,
    #[serde(rename = "@bus")]
    pub bus: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Controller {
    #[serde(rename = "@type")]
    pub controller_type: String,
    #[serde(rename = "@model")]
    pub model: String,
}

/// `<interface type='bridge'>`: a tap device named `target.dev` enslaved to `source.bridge`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct InterfaceXml {
    #[serde(rename = "@type")]
    pub interface_type: String,
    pub source: BridgeSource,
    pub mac: MacXml,
    pub model: ModelXml,
    /// `qemu` (userspace virtio-net) when the host has no `/dev/vhost-net`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub driver: Option<NicDriver>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub target: Option<NicTarget>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BridgeSource {
    #[serde(rename = "@bridge")]
    pub bridge: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct MacXml {
    #[serde(rename = "@address")]
    pub address: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ModelXml {
    #[serde(rename = "@type")]
    pub model_type: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NicDriver {
    #[serde(rename = "@name")]
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NicTarget {
    #[serde(rename = "@dev")]
    pub dev: String,
}

/// `<serial type='pty'>` whose output virtlogd also appends to `log.file`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Serial {
    #[serde(rename = "@type")]
    pub serial_type: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub log: Option<SerialLog>,
    pub target: SerialTarget,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SerialLog {
    #[serde(rename = "@file")]
    pub file: String,
    #[serde(rename = "@append")]
    pub append: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SerialTarget {
    #[serde(rename = "@port")]
    pub port: u32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Console {
    #[serde(rename = "@type")]
    pub console_type: String,
    pub target: ConsoleTarget,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ConsoleTarget {
    #[serde(rename = "@type")]
    pub target_type: String,
    #[serde(rename = "@port")]
    pub port: u32,
}

/// `<graphics type='vnc'>`; libvirt picks the port (`autoport`) and reports it in the live XML.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Graphics {
    #[serde(rename = "@type")]
    pub graphics_type: String,
    #[serde(rename = "@port", default)]
    pub port: i32,
    #[serde(rename = "@autoport", default)]
    pub autoport: String,
    #[serde(rename = "@listen", default)]
    pub listen: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Memballoon {
    #[serde(rename = "@model")]
    pub model: String,
}

/// `<domainsnapshot>`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename = "domainsnapshot")]
pub struct SnapshotXml {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub description: Option<String>,
}

/// Serializes any of these documents.
pub fn to_string<T: Serialize>(doc: &T) -> Result<String, Error> {
    quick_xml::se::to_string(doc).map_err(Error::XmlWrite)
}

/// Parses a document libvirt returned (it carries many more elements; unknown ones are ignored).
pub fn from_str<T: for<'de> Deserialize<'de>>(xml: &str) -> Result<T, Error> {
    quick_xml::de::from_str(xml).map_err(Error::XmlRead)
}

/// The parts of a live domain's XML Strata reads back.
#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
pub struct LiveDomain {
    #[serde(default)]
    pub devices: LiveDevices,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
pub struct LiveDevices {
    #[serde(default)]
    pub disk: Vec<LiveDisk>,
    #[serde(default)]
    pub interface: Vec<LiveInterface>,
    #[serde(default)]
    pub graphics: Vec<Graphics>,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
pub struct LiveDisk {
    #[serde(default)]
    pub source: Option<DiskSource>,
    pub target: DiskTarget,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
pub struct LiveInterface {
    #[serde(default)]
    pub target: Option<NicTarget>,
    pub mac: Option<MacXml>,
}
