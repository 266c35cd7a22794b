//! What the numbers ran on, and how much memory a process holds, read from /proc.

use serde::Serialize;

/// The machine a run measured, recorded with every result.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_bytes: u64,
    pub kernel: String,
    /// 1-, 5- and 15-minute load averages; other work on the machine skews every figure.
    pub load_average_start: [f64; 3],
    pub load_average_end: [f64; 3],
}

impl Machine {
    pub fn probe() -> Machine {
        let cpuinfo = read("/proc/cpuinfo");
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_default(),
            memory_bytes: kib_field(&read("/proc/meminfo"), "MemTotal:").unwrap_or(0) * 1024,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            load_average_start: load_average(),
            load_average_end: [0.0; 3],
        }
    }
}

pub fn load_average() -> [f64; 3] {
    let text = read("/proc/loadavg");
    let mut fields = text.split_whitespace().map(|f| f.parse().unwrap_or(0.0));
    [(); 3].map(|()| fields.next().unwrap_or(0.0))
}

/// Resident memory of a process: now and at its peak.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Memory {
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
}

/// Reads `VmRSS` and `VmHWM` of `pid` (`None`: this process).
pub fn memory(pid: Option<u32>) -> Memory {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let status = read(&path);
    Memory {
        rss_bytes: kib_field(&status, "VmRSS:").unwrap_or(0) * 1024,
        peak_rss_bytes: kib_field(&status, "VmHWM:").unwrap_or(0) * 1024,
    }
}

/// An unreadable /proc file reads as empty: the figures it feeds are informative, and a zero
/// in the report is plainer than a failed run.
fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_resident_memory() {
        let m = memory(None);
        assert!(m.rss_bytes > 0 && m.peak_rss_bytes >= m.rss_bytes);
    }

    #[test]
    fn kib_fields_parse() {
        assert_eq!(kib_field("VmRSS:\t  1234 kB\n", "VmRSS:"), Some(1234));
        assert_eq!(kib_field("VmHWM: 1 kB\n", "VmRSS:"), None);
    }
}
