#!/usr/bin/env bash
# Builds Strata's tiny test guest into target/test-image/ (ZStack shipped a 22 MB test image the
# same way): the Debian cloud kernel and a busybox-static initramfs for direct kernel boot, plus a
# small qcow2 "root disk" whose first bytes are a label, so image cache, overlays and disk
# hot-plug can be checked from inside the guest. Everything is fetched with apt-get download and
# cached inside target/test-image/; the build is skipped when its outputs exist and this script
# has not changed since.
#
# Outputs: vmlinuz, initrd.img, disk.qcow2 (+ disk.qcow2.sha256)
#
# What the guest's /init prints on ttyS0 (the tests grep these lines; CRLF line endings):
#   STRATA-BOOT-MARKER name=<strata.name> uptime=..       first, before any driver loads
#   STRATA-ETH0 mac=..                                     when it has a NIC
#   STRATA-DISK <dev> sectors=<n> head=<first 18 bytes>    every virtio disk at boot
#   STRATA-LEASE ip=<ip>/<mask> gw=<gw> dns=..             after udhcpc (empty ip: no lease)
#   STRATA-USERDATA-BEGIN / <user data> / STRATA-USERDATA-END   fetched from 169.254.169.254
#   STRATA-PING <ip> ok|fail                               a `strata-ping <ip>` user-data peer's answer changed
#   STRATA-READY                                           boot finished, acpid listening
#   STRATA-DISK-ADDED|STRATA-DISK-REMOVED|STRATA-DISK-RESIZED <dev> sectors=<n>   hot-plug
#   STRATA-POWEROFF                                        ACPI power button pressed
# It answers ping, serves "hello from <name> <ip>" with httpd on :80, and powers off at once
# on the ACPI power button (busybox acpid), so a graceful stop does not wait for a timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${STRATA_TEST_IMAGE_DIR:-$PWD/target/test-image}
STAMP="$OUT/.built-by-$(sha256sum "$0" | cut -c1-16)"
if [ -f "$STAMP" ] && [ -f "$OUT/vmlinuz" ] && [ -f "$OUT/initrd.img" ] && [ -f "$OUT/disk.qcow2" ]; then
  exit 0
fi
mkdir -p "$OUT/debs"
exec 9>"$OUT/.lock"
flock 9   # parallel test processes build once
if [ -f "$STAMP" ]; then exit 0; fi

for tool in cpio qemu-img; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: run hack/install-deps.sh" >&2; exit 1; }
done

# The kernel ABI package linux-image-cloud-amd64 currently depends on.
KPKG=${KPKG:-$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')}
[ -n "$KPKG" ] || { echo "cannot resolve linux-image-cloud-amd64 (apt-get update?)" >&2; exit 1; }
(
  cd "$OUT/debs"
  ls "$KPKG"_*.deb >/dev/null 2>&1 || apt-get download "$KPKG"
  ls busybox-static_*.deb >/dev/null 2>&1 || apt-get download busybox-static
) 2>&1 | grep -v 'unsandboxed' || true

WORK=$(mktemp -d "$OUT/build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
dpkg -x "$OUT"/debs/"$KPKG"_*.deb "$WORK/kpkg"
dpkg -x "$OUT"/debs/busybox-static_*.deb "$WORK/bbpkg"
KV=$(ls "$WORK/kpkg/lib/modules" | head -1)
K="$WORK/kpkg/lib/modules/$KV/kernel"

R="$WORK/initramfs"
mkdir -p "$R"/{bin,sbin,etc/acpi/PWRF,proc,sys,dev,tmp,run,www,lib/modules,usr/bin,usr/sbin}
cp "$WORK/bbpkg/bin/busybox" "$R/bin/busybox"
# Debian builds these as modules (uncompressed .ko); /init loads them in dependency order.
# button + evdev deliver the ACPI power button to acpid; virtio_blk serves disks (also hot-plugged).
for m in drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_legacy_dev \
         drivers/virtio/virtio_pci_modern_dev drivers/virtio/virtio_pci net/core/failover \
         drivers/net/net_failover drivers/net/virtio_net drivers/block/virtio_blk \
         drivers/acpi/button drivers/input/evdev; do
  cp "$K/$m.ko" "$R/lib/modules/"
done

cat > "$R/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for kv in $(cat /proc/cmdline); do
  case "$kv" in strata.*=*) k=${kv%%=*}; k=${k#strata.}; eval "S_$k='${kv#*=}'";; esac
done
hostname "${S_name:-strata-guest}"
echo "STRATA-BOOT-MARKER name=$(hostname) uptime=$(cut -d' ' -f1 /proc/uptime)"
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover \
         net_failover virtio_net virtio_blk button evdev; do
  insmod /lib/modules/$m.ko 2>/dev/null
done
# The power button: acpid runs /etc/acpi/PWRF/00000080. PID 1 is this script, which ignores
# the signal plain `poweroff` sends, so the handler powers off directly (-f).
i=0; while ! ls /dev/input/event* >/dev/null 2>&1 && [ $i -lt 30 ]; do sleep 0.1; i=$((i+1)); done
acpid -c /etc/acpi -l /tmp/acpid.log
disks() { for b in /sys/block/vd*; do [ -e "$b" ] && echo "${b##*/} $(cat $b/size)"; done; }
for b in /sys/block/vd*; do
  [ -e "$b" ] && echo "STRATA-DISK ${b##*/} sectors=$(cat $b/size) head=$(head -c 18 /dev/${b##*/} | tr -d '\0')"
done
# Report disk hot-plug, removal and growth, so the host can check them from the serial log.
(
  old=$(disks)
  while true; do
    sleep 1; new=$(disks)
    [ "$new" = "$old" ] && continue
    echo "$old" | while read -r d s; do
      [ -n "$d" ] || continue
      n=$(echo "$new" | awk -v d="$d" '$1==d{print $2}')
      if [ -z "$n" ]; then echo "STRATA-DISK-REMOVED $d sectors=$s"
      elif [ "$n" != "$s" ]; then echo "STRATA-DISK-RESIZED $d sectors=$n"; fi
    done
    echo "$new" | while read -r d s; do
      [ -n "$d" ] || continue
      echo "$old" | grep -q "^$d " || echo "STRATA-DISK-ADDED $d sectors=$s"
    done
    old=$new
  done
) &
ip link set lo up
ip=; router=; dns=; mask=
if [ -e /sys/class/net/eth0 ] || { sleep 1; [ -e /sys/class/net/eth0 ]; }; then
  ip link set eth0 up
  echo "STRATA-ETH0 mac=$(cat /sys/class/net/eth0/address)"
  # Generous timeouts: under TCG with several guests booting, 1 s replies are often late.
  udhcpc -i eth0 -s /etc/udhcpc.sh -t ${S_dhcp_tries:-10} -T 2 -A 2 -n -q -x hostname:"$(hostname)" >/dev/null 2>&1
  [ -f /tmp/lease ] && . /tmp/lease
fi
echo "STRATA-LEASE ip=$ip/$mask gw=$router dns=$dns uptime=$(cut -d' ' -f1 /proc/uptime)"
if [ -n "$ip" ]; then
  # Debian's busybox-static wget has no -T (it segfaults on it): busybox timeout bounds it.
  if timeout 10 wget -q -O /tmp/user-data http://169.254.169.254/latest/user-data 2>/dev/null; then
    echo "STRATA-USERDATA-BEGIN"; cat /tmp/user-data; echo; echo "STRATA-USERDATA-END"
  else
    echo "STRATA-USERDATA-NONE"
  fi
fi
# `strata-ping <ip>` lines in the user data: ping that peer every second and say on the console
# whenever its answer changes (so VM-to-VM reachability, and a security group cutting it, show).
for peer in $(sed -n 's/^strata-ping \([0-9.]*\)$/\1/p' /tmp/user-data 2>/dev/null); do
  (
    last=
    while true; do
      if ping -c1 -W1 "$peer" >/dev/null 2>&1; then now=ok; else now=fail; fi
      [ "$now" != "$last" ] && echo "STRATA-PING $peer $now"
      last=$now
      sleep 1
    done
  ) &
done
echo "hello from $(hostname) $ip" > /www/index.html
httpd -p 80 -h /www
echo "STRATA-READY name=$(hostname) uptime=$(cut -d' ' -f1 /proc/uptime)"
while true; do sleep 3600; done
EOF

cat > "$R/etc/acpi/PWRF/00000080" <<'EOF'
#!/bin/sh
echo "STRATA-POWEROFF" > /dev/console
sync
poweroff -f
EOF

cat > "$R/etc/udhcpc.sh" <<'EOF'
#!/bin/sh
case "$1" in
  deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
    echo "ip=$ip mask=${mask:-24} router=${router%% *} dns='$dns'" > /tmp/lease ;;
esac
exit 0
EOF
chmod +x "$R/init" "$R/etc/udhcpc.sh" "$R/etc/acpi/PWRF/00000080" "$R/bin/busybox"

cp "$WORK/kpkg/boot/vmlinuz-$KV" "$WORK/vmlinuz"
(cd "$R" && find . -print0 | cpio --null -o -H newc 2>/dev/null | gzip -9) > "$WORK/initrd.img"

# A 64 MiB qcow2 whose first bytes say what it is: root volumes are overlays on it, and the
# guest prints the head of every disk, so an overlay that reads through to its base is visible.
printf 'STRATA-TEST-IMAGE\n' > "$WORK/disk.raw"
truncate -s 64M "$WORK/disk.raw"
qemu-img convert -q -f raw -O qcow2 "$WORK/disk.raw" "$WORK/disk.qcow2"

chmod 0644 "$WORK/vmlinuz" "$WORK/initrd.img" "$WORK/disk.qcow2"
mv "$WORK/vmlinuz" "$WORK/initrd.img" "$WORK/disk.qcow2" "$OUT/"
(cd "$OUT" && sha256sum disk.qcow2 > disk.qcow2.sha256)
rm -f "$OUT"/.built-by-*
touch "$STAMP"
ls -la "$OUT"
