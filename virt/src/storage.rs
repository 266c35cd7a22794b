//! Local primary storage: one directory per host holding the image cache and the volumes.
//!
//! ```text
//! <root>/images/<key>.img     cached images, shared by every VM (key = sha256 or hash of URL)
//! <root>/volumes/<name>.qcow2 root volumes (qcow2 overlays on a cached image) and data volumes
//! ```
//!
//! Root volumes are copy-on-write overlays (`qemu-img create -b`), so a hundred VMs of one image
//! cost one image plus what each writes. A cached image must therefore never change: it is
//! written under a temporary name, verified, and renamed into place (atomic), and never
//! rewritten. qemu runs as `libvirt-qemu`, so the directories are made traversable (0755).

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use futures::StreamExt;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::{io::AsyncWriteExt, process::Command};

use crate::{error::io, spec::validate_name, DiskFormat, Error};

/// The local primary storage of one host.
#[derive(Clone, Debug)]
pub struct Storage {
    root: PathBuf,
}

/// An image in the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedImage {
    pub path: PathBuf,
    pub format: DiskFormat,
    pub virtual_size: u64,
}

/// What `qemu-img info` says about a volume.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct VolumeInfo {
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
    pub format: String,
    #[serde(rename = "backing-filename", default)]
    pub backing_file: Option<String>,
    /// The image's internal snapshots (see [`crate::disk_snapshot`]).
    #[serde(default)]
    pub snapshots: Vec<ImageSnapshot>,
}

/// An internal snapshot of a qcow2 image.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ImageSnapshot {
    pub name: String,
}

impl Storage {
    /// Opens (creating if needed) the storage directory `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, Error> {
        let root = root.into();
        for dir in [root.clone(), root.join("images"), root.join("volumes")] {
            std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
                .map_err(io("set permissions of", &dir))?;
        }
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the volume `name` lives (whether or not it exists).
    pub fn volume_path(&self, name: &str) -> Result<PathBuf, Error> {
        validate_name(name)?;
        Ok(self.root.join("volumes").join(format!("{name}.qcow2")))
    }

    /// Returns the cached copy of the image at `url` (a path, `file://`, `http://` or
    /// `https://`), fetching it first if needed. With `sha256` (hex, optionally prefixed
    /// `sha256:`) the download is verified and refused on mismatch, and the cache is keyed by
    /// the checksum, so two URLs of the same image share one copy.
    pub async fn cache_image(&self, url: &str, sha256: Option<&str>) -> Result<CachedImage, Error> {
        let expected = sha256.map(|s| s.trim_start_matches("sha256:").to_ascii_lowercase());
        let key = match &expected {
            Some(sum) => {
                if sum.len() != 64 || !sum.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(Error::Invalid {
                        what: "sha256 checksum",
                        value: sum.clone(),
                        reason: "expected 64 hex digits",
                    });
                }
                sum.clone()
            }
            None => format!("url-{}", hex(&Sha256::digest(url.as_bytes()))),
        };
        let path = self.root.join("images").join(format!("{key}.img"));
        if !tokio::fs::try_exists(&path)
            .await
            .map_err(io("stat", &path))?
        {
            let partial = self.root.join("images").join(format!(
                "{key}.part-{}-{}",
                std::process::id(),
                unique()
            ));
            let fetched = self.fetch(url, &partial).await;
            let verified = fetched.and_then(|actual| match &expected {
                Some(e) if *e != actual => Err(Error::Checksum {
                    url: url.to_string(),
                    expected: e.clone(),
                    actual,
                }),
                _ => Ok(()),
            });
            if let Err(e) = verified {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(e);
            }
            tokio::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o644))
                .await
                .map_err(io("set permissions of", &partial))?;
            // Another process may have won the race; both copies are identical.
            tokio::fs::rename(&partial, &path)
                .await
                .map_err(io("rename", &partial))?;
        }
        let info = info(&path).await?;
        Ok(CachedImage {
            path,
            format: DiskFormat::parse(&info.format).unwrap_or(DiskFormat::Raw),
            virtual_size: info.virtual_size,
        })
    }

    /// Copies `url` to `to` and returns its sha256.
    async fn fetch(&self, url: &str, to: &Path) -> Result<String, Error> {
        let mut out = tokio::fs::File::create(to)
            .await
            .map_err(io("create", to))?;
        let mut hasher = Sha256::new();
        if let Some(src) = local_path(url) {
            let mut file = tokio::fs::File::open(&src)
                .await
                .map_err(io("open", &src))?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = tokio::io::AsyncReadExt::read(&mut file, &mut buf)
                    .await
                    .map_err(io("read", &src))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n]).await.map_err(io("write", to))?;
            }
        } else if url.starts_with("http://") || url.starts_with("https://") {
            let download = |source| Error::Download {
                url: url.to_string(),
                source,
            };
            let response = reqwest::get(url)
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(download)?;
            let mut body = response.bytes_stream();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(download)?;
                hasher.update(&chunk);
                out.write_all(&chunk).await.map_err(io("write", to))?;
            }
        } else {
            return Err(Error::UnsupportedUrl(url.to_string()));
        }
        out.sync_all().await.map_err(io("sync", to))?;
        Ok(hex(&hasher.finalize()))
    }

    /// Creates the root volume `name` as a qcow2 overlay on `image`, at least `size` bytes
    /// (never smaller than the image). An existing volume is kept as it is: it holds the VM's
    /// writes.
    pub async fn create_root_volume(
        &self,
        name: &str,
        image: &CachedImage,
        size: Option<u64>,
    ) -> Result<PathBuf, Error> {
        let path = self.volume_path(name)?;
        if tokio::fs::try_exists(&path)
            .await
            .map_err(io("stat", &path))?
        {
            return Ok(path);
        }
        let size = size.unwrap_or(0).max(image.virtual_size);
        let tmp = temp_sibling(&path);
        let backing = image.path.display().to_string();
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            image.format.as_str(),
            "-b",
            &backing,
            &tmp.display().to_string(),
            &size.to_string(),
        ])
        .await?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(io("rename", &tmp))?;
        Ok(path)
    }

    /// Creates an empty qcow2 data volume of `size` bytes; an existing one is kept.
    pub async fn create_data_volume(&self, name: &str, size: u64) -> Result<PathBuf, Error> {
        let path = self.volume_path(name)?;
        if tokio::fs::try_exists(&path)
            .await
            .map_err(io("stat", &path))?
        {
            return Ok(path);
        }
        let tmp = temp_sibling(&path);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            &tmp.display().to_string(),
            &size.to_string(),
        ])
        .await?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(io("rename", &tmp))?;
        Ok(path)
    }

    /// Grows a volume that no running domain uses (see [`crate::Libvirt::resize_disk`] for
    /// running ones). Shrinking is refused: it would cut the guest's file system.
    pub async fn resize(&self, name: &str, size: u64) -> Result<(), Error> {
        let path = self.volume_path(name)?;
        let current = info(&path).await?.virtual_size;
        if size < current {
            return Err(Error::Invalid {
                what: "volume size",
                value: size.to_string(),
                reason: "volumes only grow",
            });
        }
        if size == current {
            return Ok(());
        }
        qemu_img(&[
            "resize",
            "-q",
            &path.display().to_string(),
            &size.to_string(),
        ])
        .await
    }

    /// Deletes the volume; succeeds when it does not exist.
    pub async fn delete_volume(&self, name: &str) -> Result<(), Error> {
        let path = self.volume_path(name)?;
        match tokio::fs::remove_file(&path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("delete", &path)(e)),
            _ => Ok(()),
        }
    }

    /// Names of the volumes on this storage.
    pub async fn volumes(&self) -> Result<Vec<String>, Error> {
        let dir = self.root.join("volumes");
        let mut entries = tokio::fs::read_dir(&dir).await.map_err(io("list", &dir))?;
        let mut names = Vec::new();
        while let Some(e) = entries.next_entry().await.map_err(io("list", &dir))? {
            if let Some(name) = e
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".qcow2"))
            {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    /// `qemu-img info` of the volume `name`.
    pub async fn volume_info(&self, name: &str) -> Result<VolumeInfo, Error> {
        info(&self.volume_path(name)?).await
    }
}

/// `qemu-img info` of any image file. `-U` (no lock) so it works while QEMU has it open.
pub async fn info(path: &Path) -> Result<VolumeInfo, Error> {
    let out =
        qemu_img_output(&["info", "-U", "--output=json", &path.display().to_string()]).await?;
    parse_info(&out)
}

fn parse_info(out: &str) -> Result<VolumeInfo, Error> {
    serde_json::from_str(out).map_err(|e| Error::Command {
        program: "qemu-img info".into(),
        status: "unexpected output".into(),
        stderr: e.to_string(),
    })
}

async fn qemu_img(args: &[&str]) -> Result<(), Error> {
    qemu_img_output(args).await.map(drop)
}

async fn qemu_img_output(args: &[&str]) -> Result<String, Error> {
    output("qemu-img", args).await
}

/// Runs `program` and returns its standard output; a failure carries its standard error.
pub(crate) async fn output(program: &str, args: &[&str]) -> Result<String, Error> {
    let out = Command::new(program)
        .args(args)
        .output()
        .await
        .map_err(|source| Error::Spawn {
            program: program.into(),
            source,
        })?;
    if !out.status.success() {
        return Err(Error::Command {
            program: format!("{program} {}", args.first().unwrap_or(&"")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn local_path(url: &str) -> Option<PathBuf> {
    if let Some(p) = url.strip_prefix("file://") {
        Some(PathBuf::from(p))
    } else if url.starts_with('/') {
        Some(PathBuf::from(url))
    } else {
        None
    }
}

fn temp_sibling(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}-{}", std::process::id(), unique()));
    path.with_file_name(name)
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_qemu_img_info() {
        let out = r#"{
    "children": [],
    "virtual-size": 67108864,
    "filename": "/s/volumes/a.qcow2",
    "cluster-size": 65536,
    "format": "qcow2",
    "actual-size": 200704,
    "backing-filename": "/s/images/abc.img",
    "dirty-flag": false
}"#;
        let info = parse_info(out).expect("parses");
        assert_eq!(info.virtual_size, 64 << 20);
        assert_eq!(info.format, "qcow2");
        assert_eq!(info.backing_file.as_deref(), Some("/s/images/abc.img"));
    }

    #[tokio::test]
    async fn caches_verifies_and_overlays_images() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("base.raw");
        std::fs::write(&src, vec![7u8; 1 << 20]).expect("writes");
        let sum = hex(&Sha256::digest(std::fs::read(&src).expect("reads")));
        let storage = Storage::open(dir.path().join("ps")).expect("opens");

        let wrong = "0".repeat(64);
        let err = storage
            .cache_image(src.to_str().expect("utf-8"), Some(&wrong))
            .await
            .expect_err("a wrong checksum is refused");
        assert!(matches!(err, Error::Checksum { .. }), "{err}");
        assert_eq!(
            std::fs::read_dir(dir.path().join("ps/images"))
                .expect("lists")
                .count(),
            0,
            "nothing half-written stays in the cache"
        );

        let url = format!("file://{}", src.display());
        let image = storage
            .cache_image(&url, Some(&format!("sha256:{sum}")))
            .await
            .expect("caches");
        assert_eq!(image.format, DiskFormat::Raw);
        assert_eq!(image.virtual_size, 1 << 20);
        let again = storage.cache_image(&url, Some(&sum)).await.expect("cached");
        assert_eq!(again, image, "the second VM shares the first one's copy");

        let root = storage
            .create_root_volume("vm-root", &image, Some(4 << 20))
            .await
            .expect("overlay");
        let info = storage.volume_info("vm-root").await.expect("info");
        assert_eq!(info.format, "qcow2");
        assert_eq!(info.virtual_size, 4 << 20);
        assert_eq!(info.backing_file.as_deref(), image.path.to_str());
        assert_eq!(
            storage
                .create_root_volume("vm-root", &image, None)
                .await
                .expect("kept"),
            root
        );

        storage
            .create_data_volume("vm-data", 2 << 20)
            .await
            .expect("data");
        storage.resize("vm-data", 8 << 20).await.expect("grows");
        assert_eq!(
            storage
                .volume_info("vm-data")
                .await
                .expect("info")
                .virtual_size,
            8 << 20
        );
        assert!(
            storage.resize("vm-data", 1 << 20).await.is_err(),
            "never shrinks"
        );
        assert_eq!(
            storage.volumes().await.expect("lists"),
            ["vm-data", "vm-root"]
        );

        storage.delete_volume("vm-data").await.expect("deletes");
        storage
            .delete_volume("vm-data")
            .await
            .expect("deletes again");
        assert_eq!(storage.volumes().await.expect("lists"), ["vm-root"]);
        assert!(storage.volume_path("../x").is_err());
        assert!(matches!(
            storage.cache_image("ftp://x/y", None).await,
            Err(Error::UnsupportedUrl(_))
        ));
    }
}
