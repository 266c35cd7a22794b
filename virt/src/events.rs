//! libvirt domain lifecycle events as a stream.
//!
//! Why a `virsh event --loop` child process instead of `virConnectDomainEventRegisterAny`: the
//! `virt` crate (0.5) binds neither that call nor its callbacks, and the workspace forbids
//! `unsafe` code, so binding it ourselves is not an option. `virsh` is libvirt's own client
//! and delivers the same events from the same daemon, one line each, as they happen
//! (`event 'lifecycle' for domain 'NAME': Stopped Destroyed`). If the child exits (libvirtd
//! restarted) it is started again; events lost in that gap are why consumers also re-read
//! states periodically.

use std::{process::Stdio, time::Duration};

use futures::Stream;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
    sync::mpsc,
};
use tokio_stream::wrappers::ReceiverStream;

/// What happened to a domain (libvirt's `virDomainEventType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    Defined,
    Undefined,
    Started,
    Suspended,
    Resumed,
    Stopped,
    Shutdown,
    PMSuspended,
    Crashed,
    Other,
}

impl EventKind {
    fn parse(s: &str) -> Self {
        match s {
            "Defined" => EventKind::Defined,
            "Undefined" => EventKind::Undefined,
            "Started" => EventKind::Started,
            "Suspended" => EventKind::Suspended,
            "Resumed" => EventKind::Resumed,
            "Stopped" => EventKind::Stopped,
            "Shutdown" => EventKind::Shutdown,
            "PMSuspended" => EventKind::PMSuspended,
            "Crashed" => EventKind::Crashed,
            _ => EventKind::Other,
        }
    }
}

/// One lifecycle event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainEvent {
    pub domain: String,
    pub kind: EventKind,
    /// libvirt's reason, e.g. `Destroyed`, `Shutdown`, `Booted`, `Finished after guest request`.
    pub detail: String,
}

/// Parses one line of `virsh event --event lifecycle` output.
pub fn parse_line(line: &str) -> Option<DomainEvent> {
    let rest = line
        .trim_end()
        .strip_prefix("event 'lifecycle' for domain '")?;
    let (domain, rest) = rest.rsplit_once("': ")?;
    let (kind, detail) = rest.split_once(' ').unwrap_or((rest, ""));
    Some(DomainEvent {
        domain: domain.to_string(),
        kind: EventKind::parse(kind),
        detail: detail.to_string(),
    })
}

/// Lifecycle events of every domain on the daemon at `uri`, until the stream is dropped.
/// The stream is live once this returns: the watcher process is already connecting.
pub fn lifecycle_events(uri: &str) -> impl Stream<Item = DomainEvent> + Send + 'static {
    let (tx, rx) = mpsc::channel(1024);
    let uri = uri.to_string();
    tokio::spawn(async move {
        while !tx.is_closed() {
            let started = tokio::time::Instant::now();
            if let Err(e) = watch(&uri, &tx).await {
                tracing::warn!(%uri, error = %e, "libvirt event watcher failed");
            }
            if tx.is_closed() {
                break;
            }
            // A watcher that ran its course is replaced at once; one that failed early
            // (libvirtd restarting) after a pause.
            if started.elapsed() < Duration::from_secs(5) {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    });
    ReceiverStream::new(rx)
}

async fn watch(uri: &str, tx: &mpsc::Sender<DomainEvent>) -> std::io::Result<()> {
    let mut child = Command::new("virsh")
        // --timeout bounds the life of a watcher whose parent died without killing it (it
        // would otherwise linger until its next write fails); the loop starts a new one.
        .args([
            "-c",
            uri,
            "event",
            "--loop",
            "--event",
            "lifecycle",
            "--timeout",
            "600",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let Some(stdout) = child.stdout.take() else {
        return Ok(());
    };
    let mut lines = BufReader::new(stdout).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => match line? {
                Some(line) => {
                    if let Some(event) = parse_line(&line) {
                        if tx.send(event).await.is_err() {
                            return Ok(());
                        }
                    }
                }
                None => break,
            },
            () = tx.closed() => return Ok(()),
        }
    }
    let status = child.wait().await?;
    tracing::info!(%uri, %status, "libvirt event watcher exited");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_virsh_event_lines() {
        assert_eq!(
            parse_line("event 'lifecycle' for domain 'ns.vm-1': Stopped Destroyed\n"),
            Some(DomainEvent {
                domain: "ns.vm-1".into(),
                kind: EventKind::Stopped,
                detail: "Destroyed".into(),
            })
        );
        let e =
            parse_line("event 'lifecycle' for domain 'a': Shutdown Finished after guest request")
                .expect("parses");
        assert_eq!(
            (e.kind, e.detail.as_str()),
            (EventKind::Shutdown, "Finished after guest request")
        );
        assert_eq!(parse_line("event loop timed out"), None);
        assert_eq!(parse_line("event 'reboot' for domain 'a'"), None);
    }
}
