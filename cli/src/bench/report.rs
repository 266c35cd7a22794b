//! The result of a run: one JSON document (`--out`) and the table printed at the end.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::api::CreatePath;
use super::fanout::Fanout;
use super::fixture::Topology;
use super::libvirt::Libvirt;
use super::machine::{Machine, Memory};
use super::store::Store;
use super::vms::VmRound;
use super::Error;

/// ZStack's published times for 1 / 10 / 100 / 1,000 / 10,000 VMs, 100 client threads.
pub const ZSTACK_SECONDS: [(usize, f64); 5] = [
    (1, 0.51),
    (10, 1.55),
    (100, 11.33),
    (1_000, 103.0),
    (10_000, 23.0 * 60.0),
];

/// A phase that ran, or why it did not.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome<T> {
    Measured(T),
    Skipped { reason: String },
}

impl<T> Outcome<T> {
    pub fn skipped(reason: impl Into<String>) -> Self {
        Outcome::Skipped {
            reason: reason.into(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Results {
    /// Bumped when a field changes meaning.
    pub schema: &'static str,
    /// The command line that produced this file.
    pub command: String,
    pub machine: Machine,
    pub store: String,
    pub vm_phase: Outcome<VmPhase>,
    pub create_path: Outcome<CreatePath>,
    pub watch_fanout: Outcome<Fanout>,
    pub scale: Outcome<Store>,
    pub libvirt: Outcome<Libvirt>,
}

#[derive(Clone, Debug, Serialize)]
pub struct VmPhase {
    pub topology: Topology,
    pub host_capacity_cpu: i64,
    /// From start until every simulated host was registered and Connected.
    pub hosts_ready_seconds: f64,
    /// Every VM has one NIC (so one IP) and a root Volume.
    pub vm_shape: &'static str,
    pub rounds: Vec<VmRound>,
    /// The whole all-in-one process (API server, controllers, every agent, the bench's own
    /// clients) after the last round.
    pub process_memory: Memory,
}

impl Results {
    pub fn write_json(&self, path: &Path) -> Result<(), Error> {
        let text = serde_json::to_string_pretty(self).map_err(Error::Json)?;
        std::fs::write(path, text + "\n").map_err(|source| Error::Write {
            path: path.to_owned(),
            source,
        })
    }

    /// The human-readable summary.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(
            out,
            "\nstrata bench: {} CPUs ({}), {:.1} GiB, load {:.2} → {:.2}, store: {}",
            m.cpus,
            m.cpu_model,
            gib(m.memory_bytes),
            m.load_average_start[0],
            m.load_average_end[0],
            self.store
        );
        match &self.vm_phase {
            Outcome::Measured(phase) => {
                let t = phase.topology;
                let _ = writeln!(
                    out,
                    "\n{} simulated hosts in {} clusters over {} zones, Connected in {:.1} s",
                    t.hosts, t.clusters, t.zones, phase.hosts_ready_seconds
                );
                let _ = writeln!(
                    out,
                    "{:>7} {:>7} {:>10} {:>9} {:>24} {:>10} {:>10} {:>24}",
                    "VMs",
                    "clients",
                    "all Running",
                    "ZStack",
                    "create→Running p50/p95/p99",
                    "create/s",
                    "all gone",
                    "delete→gone p50/p95/p99"
                );
                for r in &phase.rounds {
                    let zstack = ZSTACK_SECONDS
                        .iter()
                        .find(|(n, _)| *n == r.vms)
                        .map_or("-".to_owned(), |(_, s)| seconds(*s));
                    let _ = writeln!(
                        out,
                        "{:>7} {:>7} {:>11} {:>9} {:>24} {:>10.0} {:>10} {:>24}",
                        r.vms,
                        r.clients,
                        seconds(r.create.wall_seconds),
                        zstack,
                        triple(&r.create.to_goal),
                        r.create.api_per_second,
                        seconds(r.delete.wall_seconds),
                        triple(&r.delete.to_goal),
                    );
                }
                let _ = writeln!(
                    out,
                    "all-in-one process RSS after the last round: {:.0} MiB",
                    mib(phase.process_memory.rss_bytes)
                );
            }
            Outcome::Skipped { reason } => {
                let _ = writeln!(out, "\nVM create/delete: skipped: {reason}");
            }
        }
        match &self.create_path {
            Outcome::Measured(c) => {
                let _ = writeln!(out, "\ncreate path ({} B objects):", c.payload_bytes);
                for a in &c.api {
                    let _ = writeln!(out, "  API create  {}", throughput(a));
                }
                match &c.etcd {
                    Outcome::Measured(e) => {
                        for (run, ratio) in e.runs.iter().zip(&e.api_cost_ratio) {
                            let _ = writeln!(
                                out,
                                "  etcd put    {}   API costs {:.2}× (throughput), {:.2}× (p50)",
                                throughput(run),
                                ratio.throughput,
                                ratio.p50
                            );
                        }
                    }
                    Outcome::Skipped { reason } => {
                        let _ = writeln!(out, "  etcd put    skipped: {reason}");
                    }
                }
                for g in &c.gets {
                    let _ = writeln!(out, "  API get     {}", throughput(g));
                }
            }
            Outcome::Skipped { reason } => {
                let _ = writeln!(out, "\ncreate path: skipped: {reason}");
            }
        }
        match &self.watch_fanout {
            Outcome::Measured(f) => {
                let _ = writeln!(
                    out,
                    "\nwatch fan-out: {} watchers × {} events = {} delivered in {} ({:.0}/s), delivery p50 {:.1} ms p99 {:.1} ms",
                    f.watchers,
                    f.events,
                    f.delivered,
                    seconds(f.wall_seconds),
                    f.delivered_per_second,
                    f.delivery_latency.p50_ms,
                    f.delivery_latency.p99_ms
                );
            }
            Outcome::Skipped { reason } => {
                let _ = writeln!(out, "\nwatch fan-out: skipped: {reason}");
            }
        }
        match &self.scale {
            Outcome::Measured(s) => {
                for l in &s.lists {
                    let _ = writeln!(
                        out,
                        "list {:>7} VMs: {:>8} ({:.1} MiB body)",
                        l.objects,
                        seconds(l.seconds),
                        mib(l.bytes as u64)
                    );
                }
                let _ = writeln!(
                    out,
                    "API server RSS: {:.0} MiB empty, {:.0} MiB with {} hosts + {} VMs (peak {:.0} MiB); filled at {:.0} writes/s",
                    mib(s.memory_empty.rss_bytes),
                    mib(s.memory_full.rss_bytes),
                    s.hosts,
                    s.vms,
                    mib(s.memory_full.peak_rss_bytes),
                    s.fill_writes_per_second
                );
            }
            Outcome::Skipped { reason } => {
                let _ = writeln!(out, "store scale: skipped: {reason}");
            }
        }
        match &self.libvirt {
            Outcome::Measured(l) => {
                let _ = writeln!(
                    out,
                    "real VMs ({} runs, domain type {}): create → Running p50 {} (max {}), raw virsh define+start p50 {} (max {}): {:.2}× (target ≤ 1.2×); warm-up {}",
                    l.runs,
                    l.domain_type,
                    seconds(l.strata.p50_ms / 1000.0),
                    seconds(l.strata.max_ms / 1000.0),
                    seconds(l.raw_virsh.p50_ms / 1000.0),
                    seconds(l.raw_virsh.max_ms / 1000.0),
                    l.ratio_p50,
                    seconds(l.warm_up_seconds)
                );
            }
            Outcome::Skipped { reason } => {
                let _ = writeln!(out, "real VMs vs virsh: skipped: {reason}");
            }
        }
        out
    }
}

fn throughput(t: &super::api::Throughput) -> String {
    format!(
        "{:>3} clients {:>6} ops {:>8.0}/s p50 {:>6.2} ms p99 {:>6.2} ms",
        t.clients, t.ops, t.per_second, t.latency.p50_ms, t.latency.p99_ms
    )
}

fn triple(l: &super::stats::Latency) -> String {
    format!(
        "{}/{}/{}",
        seconds(l.p50_ms / 1000.0),
        seconds(l.p95_ms / 1000.0),
        seconds(l.p99_ms / 1000.0)
    )
}

/// Seconds with a precision that suits their size: 0.051 s, 1.55 s, 103 s, 23.0 min.
fn seconds(s: f64) -> String {
    if s >= 600.0 {
        format!("{:.1} min", s / 60.0)
    } else if s >= 100.0 {
        format!("{s:.0} s")
    } else if s >= 1.0 {
        format!("{s:.2} s")
    } else {
        format!("{s:.3} s")
    }
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_read_like_zstacks_table() {
        assert_eq!(seconds(0.051), "0.051 s");
        assert_eq!(seconds(1.55), "1.55 s");
        assert_eq!(seconds(103.0), "103 s");
        assert_eq!(seconds(1380.0), "23.0 min");
    }

    #[test]
    fn skipped_phases_say_why_in_json() {
        let o: Outcome<Libvirt> = Outcome::skipped("not requested (--libvirt)");
        assert_eq!(
            serde_json::to_value(o).unwrap(),
            serde_json::json!({ "status": "skipped", "reason": "not requested (--libvirt)" })
        );
    }
}
