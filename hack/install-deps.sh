#!/usr/bin/env bash
# Installs what Strata's builds and tests need on a fresh machine (Debian 12 with Rust, gcc,
# kubectl, python3). Idempotent: installs only what is missing, so a warm machine pays nothing.
set -euo pipefail
# `hack/install-deps.sh build` installs only what building Strata needs (hack/up.sh uses it);
# with no argument it installs everything the tests need too.
mode="${1:-test}"

# kubectl ships on the machine image in several versions; tests that need one pick it by path,
# the rest use `kubectl` from PATH.
if ! command -v kubectl >/dev/null 2>&1; then
  for v in 33 32 31 30 29 28 27; do
    if [ -x "/usr/lib/google-cloud-sdk/bin/kubectl.1.$v" ]; then
      ln -sf "/usr/lib/google-cloud-sdk/bin/kubectl.1.$v" /usr/local/bin/kubectl
      break
    fi
  done
  command -v kubectl >/dev/null 2>&1 || { echo "missing: kubectl" >&2; exit 1; }
fi

# Debian packages, by the file that proves each is installed:
#   etcd             etcd-server 3.4 (the etcd store backend's tests start a real etcd; nothing
#                    starts it as a service here, there is no systemd)
#   protoc           protobuf-compiler, run by etcd-client's build script
#   descriptor.proto libprotobuf-dev: the well-known .proto files protoc needs (only a Recommends
#                    of protobuf-compiler, so --no-install-recommends would skip it)
apt_need=()
command -v protoc >/dev/null 2>&1 || apt_need+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || apt_need+=(libprotobuf-dev)
if [ "$mode" = test ]; then
  command -v etcd >/dev/null 2>&1 || apt_need+=(etcd-server)
  #   chromium       the dashboard e2e test drives Debian's headless Chromium with Playwright
  command -v chromium >/dev/null 2>&1 || apt_need+=(chromium)
fi
if [ ${#apt_need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${apt_need[@]}"
fi

# playwright-core (npm, pinned by e2e/ui/package-lock.json) drives that Chromium; it downloads no
# browser of its own.
ui="$(dirname "$0")/../e2e/ui"
if [ "$mode" = test ] && [ ! -d "$ui/node_modules/playwright-core" ]; then
  (cd "$ui" && npm ci --no-audit --no-fund --loglevel=error)
fi
