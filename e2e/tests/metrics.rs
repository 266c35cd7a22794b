//! Observability as an operator sees it: `strata up` serves `/metrics` for the API server, the
//! controllers and the agents; every metric docs/operations.md lists is there, and the numbers
//! move when a VM is applied with kubectl and reaches Running.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::{repo_file, Strata};

const WAIT: Duration = Duration::from_secs(60);

/// One sample line: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed OpenMetrics exposition.
struct Exposition {
    text: String,
    /// family name → type, from `# TYPE` lines.
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Exposition {
    fn parse(text: String) -> Exposition {
        let mut types = BTreeMap::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(decl) = line.strip_prefix("# TYPE ") {
                let (family, type_) = decl.split_once(' ').expect("TYPE names a type");
                types.insert(family.to_owned(), type_.to_owned());
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            samples.push(Sample {
                name: name.to_owned(),
                labels,
                value: value.parse().expect("a numeric value"),
            });
        }
        Exposition {
            text,
            types,
            samples,
        }
    }

    /// The sum of `name` over the series whose labels include `selector`.
    fn sum(&self, name: &str, selector: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                selector
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    // Label values here never contain `",` or escaped quotes.
    text.split("\",")
        .filter(|kv| !kv.is_empty())
        .filter_map(|kv| kv.split_once("=\""))
        .map(|(k, v)| (k.to_owned(), v.trim_end_matches('"').to_owned()))
        .collect()
}

/// (metric, type) of every row of the metrics table in docs/operations.md.
fn documented_metrics() -> Vec<(String, String)> {
    let doc = std::fs::read_to_string(repo_file("docs/operations.md")).expect("operations.md");
    let rows: Vec<(String, String)> = doc
        .lines()
        .filter(|l| l.starts_with("| `strata_"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells[1].trim_matches('`').to_owned(), cells[2].to_owned())
        })
        .collect();
    assert!(
        rows.len() >= 15,
        "the metrics table in docs/operations.md is missing or unreadable: {rows:?}"
    );
    rows
}

fn scrape(strata: &Strata) -> Exposition {
    Exposition::parse(strata.ok(&["get", "--raw", "/metrics"]))
}

#[test]
fn every_documented_metric_is_served_and_moves_when_a_vm_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let strata = Strata::start(dir.path(), &["--sim-hosts", "1"]);
    // The agent has registered and its watch is filled once its VM gauges read 0 for Running.
    let mut before = scrape(&strata);
    strata.eventually("the agent reports its host", WAIT, || {
        before = scrape(&strata);
        before.samples.iter().any(|s| {
            s.name == "strata_agent_vms"
                && s.labels.get("phase").map(String::as_str) == Some("Running")
        })
    });

    assert!(
        before.text.ends_with("# EOF\n"),
        "one exposition, ending in # EOF"
    );
    for (metric, type_) in documented_metrics() {
        // Counters are declared without the `_total` their samples carry.
        let family = match type_.as_str() {
            "counter" => metric.strip_suffix("_total").unwrap_or(&metric),
            _ => metric.as_str(),
        };
        assert_eq!(
            before.types.get(family),
            Some(&type_),
            "{metric} ({type_}) in docs/operations.md is not served as documented\n{}",
            before.text
        );
    }

    let vm = [("resource", "virtualmachines"), ("verb", "create")];
    strata.ok(&[
        "apply",
        "-f",
        repo_file("manifests/examples/quickstart.yaml")
            .to_str()
            .unwrap(),
    ]);
    strata.ok(&[
        "wait",
        "--for=jsonpath={.status.phase}=Running",
        "vm/demo",
        "--timeout=60s",
    ]);

    let mut after = scrape(&strata);
    strata.eventually(
        "the controllers and the agent to count the VM",
        WAIT,
        || {
            after = scrape(&strata);
            after.sum("strata_controller_vm_create_to_running_seconds_count", &[])
                > before.sum("strata_controller_vm_create_to_running_seconds_count", &[])
                && after.sum("strata_agent_vms", &[("phase", "Running")]) == 1.0
        },
    );
    let grew = |name: &str, selector: &[(&str, &str)]| {
        let (b, a) = (before.sum(name, selector), after.sum(name, selector));
        assert!(
            a > b,
            "{name}{selector:?} did not grow: {b} → {a}\n{}",
            after.text
        );
    };
    grew("strata_apiserver_requests_total", &vm);
    grew("strata_apiserver_request_duration_seconds_count", &vm[..1]);
    grew(
        "strata_apiserver_store_operation_duration_seconds_count",
        &[("operation", "create"), ("backend", "redb")],
    );
    grew(
        "strata_apiserver_watch_cache_events_total",
        &[("resource", "virtualmachines"), ("type", "ADDED")],
    );
    grew(
        "strata_controller_reconciles_total",
        &[("controller", "vm")],
    );
    grew(
        "strata_controller_reconcile_duration_seconds_count",
        &[("controller", "vm")],
    );
    // Whatever the driver's operations are called, running a VM calls some.
    grew(
        "strata_agent_hypervisor_operation_duration_seconds_count",
        &[],
    );
    assert_eq!(
        after.sum("strata_controller_vm_create_to_running_seconds_count", &[]),
        before.sum("strata_controller_vm_create_to_running_seconds_count", &[]) + 1.0,
        "one VM, one create→Running observation"
    );
    assert_eq!(
        after.sum(
            "strata_apiserver_store_objects",
            &[("resource", "virtualmachines")]
        ),
        1.0
    );
    assert_eq!(after.sum("strata_agent_host_allocated_cpu", &[]), 1.0);
    assert_eq!(
        after.sum("strata_agent_host_allocated_memory_bytes", &[]),
        f64::from(512u32 << 20),
        "the quickstart VM's 512Mi"
    );
    assert!(
        after.sum(
            "strata_apiserver_open_watches",
            &[("resource", "virtualmachineinstances")]
        ) >= 1.0,
        "the controllers and the agent watch instances"
    );
    assert!(after.sum("strata_agent_lease_renewals_total", &[]) >= 1.0);

    strata.stop();
}

/// The Grafana dashboard only queries documented metrics.
#[test]
fn the_grafana_dashboard_uses_documented_metrics() {
    let documented: Vec<String> = documented_metrics().into_iter().map(|(m, _)| m).collect();
    let text = std::fs::read_to_string(repo_file("manifests/grafana/strata.json"))
        .expect("manifests/grafana/strata.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let mut used = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a PromQL expression");
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if !word.starts_with("strata_") {
                    continue;
                }
                let metric = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| word.strip_suffix(s))
                    .filter(|m| documented.iter().any(|d| d == m))
                    .unwrap_or(word);
                assert!(
                    documented.iter().any(|d| d == metric),
                    "panel {:?} queries {word}, which docs/operations.md does not list",
                    panel["title"]
                );
                used += 1;
            }
        }
    }
    assert!(used >= 15, "the dashboard queries only {used} metrics");
}
