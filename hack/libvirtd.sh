#!/usr/bin/env bash
# Starts (or stops) virtlogd and libvirtd by hand: these machines have no systemd, so nothing
# socket-activates them. `start` is idempotent and safe when several test processes race for it
# (one flock serialises them); it returns once `virsh -c qemu:///system version` answers.
# The first start takes ~8 s while libvirtd probes QEMU's capabilities; later ones ~0.2 s.
#
# usage: hack/libvirtd.sh start|stop|status
set -euo pipefail
RUN_DIR=${STRATA_LIBVIRT_RUN_DIR:-/run/strata-libvirt}
URI=qemu:///system
mkdir -p "$RUN_DIR"

answers() { virsh -c "$URI" version >/dev/null 2>&1; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

case "${1:-start}" in
start)
  answers && exit 0
  exec 9>"$RUN_DIR/lock"
  flock 9
  answers && exit 0
  # virtlogd writes the serial console logs (<serial><log file=...>) and qemu's stderr.
  pgrep -x virtlogd >/dev/null || virtlogd -d -p "$RUN_DIR/virtlogd.pid"
  pgrep -x libvirtd >/dev/null || libvirtd -d -p "$RUN_DIR/libvirtd.pid"
  for _ in $(seq 1 300); do answers && exit 0; sleep 0.1; done
  echo "libvirtd did not answer on $URI within 30 s" >&2
  exit 1 ;;
stop)
  # Running guests survive a libvirtd stop. libvirtd's own shutdown can hang for a minute here
  # (its udev thread waits for a udevd that does not exist), so it gets 30 s, then SIGKILL.
  for d in libvirtd virtlogd; do
    alive "$RUN_DIR/$d.pid" || continue
    p=$(cat "$RUN_DIR/$d.pid"); kill "$p" 2>/dev/null || true
    for _ in $(seq 1 300); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$p" 2>/dev/null && kill -9 "$p" 2>/dev/null || true
    rm -f "$RUN_DIR/$d.pid"
  done ;;
status)
  answers && virsh -c "$URI" version ;;
*)
  echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
