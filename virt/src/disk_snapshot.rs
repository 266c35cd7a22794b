//! Snapshots of one disk: internal qcow2 snapshots of the disk's image, as a volume's own (the
//! domain snapshots of [`crate::Libvirt`] take every disk at once). While no QEMU has the image
//! open they are `qemu-img snapshot -c/-a/-d`; while the domain runs, QEMU takes and deletes them
//! itself (QMP `blockdev-snapshot-internal-sync` / `blockdev-snapshot-delete-internal-sync`,
//! sent with `virsh qemu-monitor-command`), since writing the image from outside would corrupt
//! it. A revert needs the image closed: QEMU has no live internal-snapshot revert, so the caller
//! stops the domain first (as ZStack requires for a volume revert).

use std::path::Path;

use serde_json::{json, Value};

use crate::{storage::output, Error};

/// The internal snapshots of the image at `path`, by name (read with `-U`, so it works while
/// QEMU has the image open).
pub async fn list(path: &Path) -> Result<Vec<String>, Error> {
    let info = crate::storage::info(path).await?;
    Ok(info.snapshots.into_iter().map(|s| s.name).collect())
}

/// Takes the snapshot `name` of the image at `path`: through the QEMU of `domain` (on the
/// libvirt at `uri`) while it has the image open, else with `qemu-img`. Taking an existing
/// snapshot again succeeds.
pub async fn create(uri: &str, domain: Option<&str>, path: &Path, name: &str) -> Result<(), Error> {
    crate::spec::validate_name(name)?;
    if list(path).await?.iter().any(|s| s == name) {
        return Ok(());
    }
    match domain {
        Some(domain) => live(uri, domain, path, "blockdev-snapshot-internal-sync", name).await,
        None => offline("-c", path, name).await,
    }
}

/// Deletes the snapshot `name` of the image at `path` (see [`create`]); succeeds when it does
/// not exist.
pub async fn delete(uri: &str, domain: Option<&str>, path: &Path, name: &str) -> Result<(), Error> {
    if !list(path).await?.iter().any(|s| s == name) {
        return Ok(());
    }
    match domain {
        Some(domain) => {
            live(
                uri,
                domain,
                path,
                "blockdev-snapshot-delete-internal-sync",
                name,
            )
            .await
        }
        None => offline("-d", path, name).await,
    }
}

/// Reverts the image at `path`, which no QEMU may have open, to its snapshot `name`.
pub async fn revert(path: &Path, name: &str) -> Result<(), Error> {
    if !list(path).await?.iter().any(|s| s == name) {
        return Err(Error::Command {
            program: "qemu-img snapshot -a".into(),
            status: "no such snapshot".into(),
            stderr: format!("{} has no snapshot {name:?}", path.display()),
        });
    }
    offline("-a", path, name).await
}

async fn offline(op: &str, path: &Path, name: &str) -> Result<(), Error> {
    output(
        "qemu-img",
        &["snapshot", op, name, &path.display().to_string()],
    )
    .await
    .map(drop)
}

/// Sends `command` for the image at `path` to the QEMU of `domain`, naming the disk by the
/// node QEMU opened the image as.
async fn live(
    uri: &str,
    domain: &str,
    path: &Path,
    command: &str,
    name: &str,
) -> Result<(), Error> {
    let blocks = qmp(uri, domain, &json!({ "execute": "query-block" })).await?;
    let file = path.display().to_string();
    let node = blocks
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b.get("inserted"))
        .find(|i| i.get("file").and_then(Value::as_str) == Some(file.as_str()))
        .and_then(|i| i.get("node-name").and_then(Value::as_str))
        .ok_or_else(|| Error::Command {
            program: format!("qemu-monitor-command {domain} query-block"),
            status: "disk not found".into(),
            stderr: format!("domain {domain} has no disk {file}"),
        })?
        .to_string();
    qmp(
        uri,
        domain,
        &json!({ "execute": command, "arguments": { "device": node, "name": name } }),
    )
    .await
    .map(drop)
}

/// One QMP command to the QEMU of `domain`; its `return` value.
async fn qmp(uri: &str, domain: &str, command: &Value) -> Result<Value, Error> {
    let out = output(
        "virsh",
        &[
            "-c",
            uri,
            "qemu-monitor-command",
            domain,
            &command.to_string(),
        ],
    )
    .await?;
    let reply: Value = serde_json::from_str(&out).map_err(|e| Error::Command {
        program: "virsh qemu-monitor-command".into(),
        status: "unexpected output".into(),
        stderr: e.to_string(),
    })?;
    match reply.get("error") {
        Some(error) => Err(Error::Command {
            program: format!("qemu-monitor-command {domain} {}", command["execute"]),
            status: "error".into(),
            stderr: error.to_string(),
        }),
        None => Ok(reply.get("return").cloned().unwrap_or(Value::Null)),
    }
}
