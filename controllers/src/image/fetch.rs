//! Moving an image's bytes: copy it from `file://`, `http://` or `https://` into a file, then
//! checksum it, publishing how many bytes are done so the caller can report progress. No
//! Kubernetes types here.

use std::path::{Path, PathBuf};

use futures::StreamExt;
use md5::Md5;
use sha2::{Digest, Sha256};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::watch,
};

const BUFFER: usize = 1 << 20;
/// The first bytes of every qcow2 file ("QFI\xfb").
const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// Bytes done so far of a step, and of how many when that is known.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Count {
    pub done: u64,
    pub total: Option<u64>,
}

/// Why an image could not be fetched; `reason()` is the Ready condition's reason.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    #[error("{url} answered {status}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
    },
    #[error("{url} is unreachable")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("failed to read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl FetchError {
    pub fn reason(&self) -> &'static str {
        match self {
            FetchError::Status { status, .. } if *status == reqwest::StatusCode::NOT_FOUND => {
                "NotFound"
            }
            FetchError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                "NotFound"
            }
            FetchError::Status { .. } => "DownloadFailed",
            FetchError::Unreachable { .. } | FetchError::Read { .. } => "Unreachable",
            FetchError::Write { .. } => "BackupStorageWriteFailed",
        }
    }

    /// The message with its sources, for a condition a user reads.
    pub fn explain(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        text
    }
}

/// The checksums of a fetched file, as lowercase hex.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Sums {
    pub sha256: String,
    pub md5: String,
}

/// Copies `url` into `to` (created or truncated, and synced before returning), publishing the
/// bytes copied; returns how many.
pub(crate) async fn download(
    url: &str,
    to: &Path,
    progress: &watch::Sender<Count>,
) -> Result<u64, FetchError> {
    let write = |source| FetchError::Write {
        path: to.to_path_buf(),
        source,
    };
    let mut out = tokio::fs::File::create(to).await.map_err(write)?;
    let mut count = Count::default();
    if let Some(path) = url.strip_prefix("file://") {
        let read = |source| FetchError::Read {
            path: PathBuf::from(path),
            source,
        };
        let mut file = tokio::fs::File::open(path).await.map_err(read)?;
        count.total = Some(file.metadata().await.map_err(read)?.len());
        let mut buf = vec![0u8; BUFFER];
        loop {
            let n = file.read(&mut buf).await.map_err(read)?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).await.map_err(write)?;
            count.done += n as u64;
            progress.send_replace(count);
        }
    } else {
        let unreachable = |source| FetchError::Unreachable {
            url: url.to_string(),
            source,
        };
        let response = reqwest::get(url).await.map_err(unreachable)?;
        if !response.status().is_success() {
            return Err(FetchError::Status {
                url: url.to_string(),
                status: response.status(),
            });
        }
        count.total = response.content_length();
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(unreachable)?;
            out.write_all(&chunk).await.map_err(write)?;
            count.done += chunk.len() as u64;
            progress.send_replace(count);
        }
    }
    out.sync_all().await.map_err(write)?;
    Ok(count.done)
}

/// Reads `path` once for both checksums, publishing the bytes read.
pub(crate) async fn checksum(
    path: &Path,
    progress: &watch::Sender<Count>,
) -> Result<Sums, FetchError> {
    let read = |source| FetchError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = tokio::fs::File::open(path).await.map_err(read)?;
    let mut count = Count {
        done: 0,
        total: Some(file.metadata().await.map_err(read)?.len()),
    };
    let (mut sha256, mut md5) = (Sha256::new(), Md5::new());
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = file.read(&mut buf).await.map_err(read)?;
        if n == 0 {
            break;
        }
        sha256.update(&buf[..n]);
        md5.update(&buf[..n]);
        count.done += n as u64;
        progress.send_replace(count);
    }
    Ok(Sums {
        sha256: hex(&sha256.finalize()),
        md5: hex(&md5.finalize()),
    })
}

/// The virtual size a qcow2 header declares, or `None` when `path` is not qcow2.
pub(crate) async fn qcow2_virtual_size(path: &Path) -> Result<Option<u64>, FetchError> {
    let read = |source| FetchError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut header = [0u8; 32];
    let mut file = tokio::fs::File::open(path).await.map_err(read)?;
    match file.read_exact(&mut header).await {
        Ok(_) => Ok(parse_qcow2_header(&header)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(read(e)),
    }
}

/// qcow2 (both versions): magic at 0, the virtual size as a big-endian u64 at 24.
fn parse_qcow2_header(header: &[u8; 32]) -> Option<u64> {
    if header[..4] != QCOW2_MAGIC {
        return None;
    }
    let mut size = [0u8; 8];
    size.copy_from_slice(&header[24..32]);
    Some(u64::from_be_bytes(size))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_virtual_size_of_a_qcow2_header_only() {
        let mut header = [0u8; 32];
        header[..4].copy_from_slice(&QCOW2_MAGIC);
        header[24..32].copy_from_slice(&(64u64 << 20).to_be_bytes());
        assert_eq!(parse_qcow2_header(&header), Some(64 << 20));
        header[0] = b'X';
        assert_eq!(parse_qcow2_header(&header), None);
    }

    #[tokio::test]
    async fn copies_a_file_url_and_checksums_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src.raw");
        std::fs::write(&src, b"abc").expect("writes");
        let to = dir.path().join("copy");
        let (tx, rx) = watch::channel(Count::default());
        let url = format!("file://{}", src.display());
        assert_eq!(download(&url, &to, &tx).await.expect("copies"), 3);
        assert_eq!(
            *rx.borrow(),
            Count {
                done: 3,
                total: Some(3)
            }
        );
        let sums = checksum(&to, &tx).await.expect("reads");
        assert_eq!(
            sums.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(sums.md5, "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(qcow2_virtual_size(&to).await.expect("reads"), None);

        let missing = download("file:///nonexistent/strata-image", &to, &tx)
            .await
            .expect_err("no such file");
        assert_eq!(missing.reason(), "NotFound");
    }
}
