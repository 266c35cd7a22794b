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
  #   dnsmasq        per-L3 DHCP/DNS in the agent's network namespaces (dnsmasq-base: no service)
  #   nft, ip, ping  security groups / EIP NAT, links and namespaces, reachability checks
  #   cpio           packs the test guest's initramfs (hack/build-test-image.sh)
  command -v dnsmasq >/dev/null 2>&1 || apt_need+=(dnsmasq-base)
  command -v nft >/dev/null 2>&1 || apt_need+=(nftables)
  command -v ip >/dev/null 2>&1 || apt_need+=(iproute2)
  command -v ping >/dev/null 2>&1 || apt_need+=(iputils-ping)
  command -v cpio >/dev/null 2>&1 || apt_need+=(cpio)
  #   busybox        udhcpc, nc, httpd: the network driver's tests play guests in namespaces with it
  command -v busybox >/dev/null 2>&1 || apt_need+=(busybox-static)
  #   curl           the network driver's tests fetch from the metadata service and through NAT
  command -v curl >/dev/null 2>&1 || apt_need+=(curl)
fi
if [ ${#apt_need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${apt_need[@]}"
fi

# libvirt: the node agent links libvirt (the `virt` crate, so building needs libvirt-dev and
# pkg-config) and its tests run libvirtd and QEMU. The machine image ships qemu-utils 10.0 from
# bookworm-backports, which conflicts with plain bookworm's qemu-system 7.2, so the whole stack
# (libvirt 11.3, QEMU 10.0) comes from bookworm-backports, served by the same mirror.
virt_need=()
[ -f /usr/include/libvirt/libvirt.h ] || virt_need+=(libvirt-dev pkg-config)
if [ "$mode" = test ]; then
  command -v libvirtd >/dev/null 2>&1 || virt_need+=(libvirt-daemon-system libvirt-clients)
  command -v qemu-system-x86_64 >/dev/null 2>&1 || virt_need+=(qemu-system-x86 qemu-utils)
fi
if [ ${#virt_need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-cache policy | grep -q bookworm-backports; then
    uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources)
    echo "deb $uri bookworm-backports main" > /etc/apt/sources.list.d/bookworm-backports.list
    apt-get update -q
  fi
  apt-get install -y -q --no-install-recommends -t bookworm-backports "${virt_need[@]}"
fi

# The Python `kubernetes` client (dynamic client) is one of the API server's test clients.
if [ "$mode" = test ] && ! python3 -c 'import kubernetes' >/dev/null 2>&1; then
  python3 -m pip install -q 'kubernetes>=31,<33'
fi

# playwright-core (npm, pinned by e2e/ui/package-lock.json) drives that Chromium; it downloads no
# browser of its own.
ui="$(dirname "$0")/../e2e/ui"
if [ "$mode" = test ] && [ ! -d "$ui/node_modules/playwright-core" ]; then
  (cd "$ui" && npm ci --no-audit --no-fund --loglevel=error)
fi
