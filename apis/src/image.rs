//! Image: a template for root volumes, or an ISO for a VM's CD-ROM.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{cel, Conditions, DeletionPolicy};

/// An Image is a disk template (qcow2 or raw) that root volumes are cloned from, or an ISO a
/// VM boots from as a CD-ROM. Tiny images can skip the boot loader with `directBoot`.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "strata.io",
    version = "v1alpha1",
    kind = "Image",
    status = "ImageStatus",
    shortname = "img",
    category = "strata",
    printcolumn = r#"{"name":"Format","type":"string","jsonPath":".spec.format"}"#,
    printcolumn = r#"{"name":"OS","type":"string","jsonPath":".spec.osType"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Progress","type":"integer","priority":1,"jsonPath":".status.progress.percent"}"#,
    printcolumn = r#"{"name":"Size","type":"string","jsonPath":".status.size"}"#,
    printcolumn = r#"{"name":"URL","type":"string","priority":1,"jsonPath":".spec.url"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    /// Where the image is fetched from (`file://`, `http://` or `https://`).
    #[schemars(length(min = 8, max = 2048))]
    #[x_kube(
        validation = Rule::new("self.matches('^(file|https?)://.+')").message("url must start with file://, http:// or https://"),
        validation = cel::immutable("url")
    )]
    pub url: String,
    /// Disk format.
    #[serde(default)]
    #[x_kube(validation = cel::immutable("format"))]
    pub format: ImageFormat,
    /// Guest operating system family, for device and clock defaults.
    #[serde(default)]
    pub os_type: OsType,
    /// Expected checksum, as `sha256:<64 hex>` or `md5:<32 hex>`; verified after download.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^(sha256:[0-9a-f]{64}|md5:[0-9a-f]{32})$')").message("checksum must be sha256:<64 hex digits> or md5:<32 hex digits>"))]
    pub checksum: Option<String>,
    /// Firmware the guest boots with.
    #[serde(default)]
    pub boot_mode: BootMode,
    /// Boot this kernel (and initrd) directly instead of the disk's boot loader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_boot: Option<DirectBoot>,
    /// BackupStorages that hold the image; any of them when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub backup_storages: Vec<String>,
    /// What deleting the Image does to its copies in the stores.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// Disk format of an image.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// QEMU copy-on-write; root volumes are thin clones.
    #[default]
    Qcow2,
    /// A raw disk image.
    Raw,
    /// An ISO 9660 image, attached as a CD-ROM.
    Iso,
}

/// Guest operating system family.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
pub enum OsType {
    /// Linux guests: virtio devices, UTC clock.
    #[default]
    Linux,
    /// Windows guests: local-time clock, Hyper-V enlightenments.
    Windows,
    /// Anything else: conservative emulated devices.
    Other,
}

/// Firmware a guest boots with.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
pub enum BootMode {
    /// SeaBIOS.
    #[default]
    Legacy,
    /// OVMF.
    UEFI,
}

/// A kernel booted directly by QEMU, for images without a boot loader.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DirectBoot {
    /// Where the kernel is fetched from.
    #[schemars(length(min = 8, max = 2048))]
    #[x_kube(validation = Rule::new("self.matches('^(file|https?)://.+')").message("kernelUrl must start with file://, http:// or https://"))]
    pub kernel_url: String,
    /// Where the initrd is fetched from, if the kernel needs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 8, max = 2048))]
    #[x_kube(validation = Rule::new("self.matches('^(file|https?)://.+')").message("initrdUrl must start with file://, http:// or https://"))]
    pub initrd_url: Option<String>,
    /// Kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub cmdline: Option<String>,
}

/// Where an image is in its life.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
pub enum ImagePhase {
    /// Being fetched into a backup storage.
    #[default]
    Downloading,
    /// Fetched and verified; volumes can be cloned from it.
    Ready,
    /// Fetching or verifying failed; see the Ready condition.
    Failed,
}

/// Observed state of an Image.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Where the image is in its life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ImagePhase>,
    /// Bytes the image file takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Quantity>,
    /// Size of the disk the image describes (for qcow2, larger than `size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_size: Option<Quantity>,
    /// Checksum of the fetched file, as `sha256:<hex>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// The BackupStorage holding Strata's copy; absent while the image is used in place from
    /// `spec.url` (no writable BackupStorage, see the Ready condition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_storage: Option<String>,
    /// Where hosts fetch Strata's verified copy from, once the image is `Ready` in a
    /// BackupStorage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_url: Option<String>,
    /// How far fetching and verifying the image has come, while it is `Downloading`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<crate::Progress>,
    /// `Ready` is True once the image can be used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Conditions,
}
