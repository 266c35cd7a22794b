//! The kubeconfig and bearer token `strata up` leaves in its data dir for kubectl and clients.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::Error;

/// Name of the cluster, user and context in the written kubeconfig.
pub const CONTEXT: &str = "strata";

/// Reads the token kept in `data_dir/token`, creating one on first start so a restarted server
/// keeps accepting the kubeconfig users already have.
pub fn load_or_create_token(data_dir: &Path) -> Result<String, Error> {
    let path = data_dir.join("token");
    match std::fs::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => return Ok(token.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(Error::Io {
                action: "read",
                path,
                source,
            })
        }
    }
    let token: String = {
        use rand::Rng;
        let bytes: [u8; 24] = rand::rng().random();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    };
    write_private(&path, &token)?;
    Ok(token)
}

/// The address clients dial for a server listening on `addr`.
pub fn dial_addr(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    }
}

/// The kubeconfig text for a server at `addr` whose certificate is issued by `ca_pem`.
pub fn render(addr: SocketAddr, token: &str, ca_pem: &str) -> String {
    use base64::Engine;
    let host = dial_addr(addr);
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {CONTEXT}\n  cluster:\n    server: https://{host}\n\
         \x20   certificate-authority-data: {ca}\n\
         users:\n- name: {CONTEXT}\n  user:\n    token: {token}\n\
         contexts:\n- name: {CONTEXT}\n  context:\n    cluster: {CONTEXT}\n    user: {CONTEXT}\n    namespace: default\n\
         current-context: {CONTEXT}\n"
    )
}

/// Writes `data_dir/kubeconfig` and returns its path.
pub fn write(
    data_dir: &Path,
    addr: SocketAddr,
    token: &str,
    ca_pem: &str,
) -> Result<PathBuf, Error> {
    let path = data_dir.join("kubeconfig");
    write_private(&path, &render(addr, token, ca_pem))?;
    Ok(path)
}

/// Writes a file only its owner can read: it holds a credential.
pub(crate) fn write_private(path: &Path, text: &str) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| Error::Io {
        action: "write",
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create_token(dir.path()).unwrap();
        assert_eq!(first.len(), 48);
        assert_eq!(load_or_create_token(dir.path()).unwrap(), first);
    }

    #[test]
    fn kubeconfig_points_at_loopback_when_listening_on_every_address() {
        let text = render("0.0.0.0:6443".parse().unwrap(), "t0k", "PEM");
        assert!(text.contains("server: https://127.0.0.1:6443"));
        assert!(text.contains("    certificate-authority-data: UEVN\n"));
        assert!(text.contains("token: t0k"));
        assert!(text.contains("current-context: strata"));
    }
}
