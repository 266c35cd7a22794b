#!/usr/bin/env bash
# Runs Strata all-in-one on a fresh machine: installs the build dependencies (protoc for the etcd
# client), builds the release binary and runs `strata up` with any flags given.
set -euo pipefail
cd "$(dirname "$0")/.."
hack/install-deps.sh build
exec cargo run --release --locked -p strata-cli -- up "$@"
