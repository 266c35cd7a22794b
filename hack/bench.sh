#!/usr/bin/env bash
# Runs `strata bench` from a release build (debug builds are several times slower and would
# measure the compiler, not Strata). Arguments go to `strata bench`, e.g.
#   hack/bench.sh --vms 1,10,100,1000 --out bench.json
# docs/benchmarks.md lists the commands behind each published figure.
set -euo pipefail
cd "$(dirname "$0")/.."
hack/install-deps.sh   # etcd-server, for the raw-etcd floor and --store etcd
cargo build --release --locked -p strata-cli
exec target/release/strata bench "$@"
