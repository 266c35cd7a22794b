#!/usr/bin/env bash
# Runs Strata all-in-one on a fresh machine: installs the build dependencies (protoc for the etcd
# client), builds the release binary and runs `strata up` with any flags given.
set -euo pipefail
cd "$(dirname "$0")/.."
hack/install-deps.sh build
# The quickstart (manifests/examples/quickstart.yaml) runs on simulated hosts, so this wrapper
# asks for them unless a driver is named: `hack/up.sh --driver auto` uses libvirt where it answers.
case " $* " in
  *" --driver"*) exec cargo run --release --locked -p strata-cli -- up "$@" ;;
  *) exec cargo run --release --locked -p strata-cli -- up --driver sim "$@" ;;
esac
