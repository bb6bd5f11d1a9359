#!/bin/busybox sh
# /init of the initramfs that `cargo xtask vm-test` builds (xtask/src/vm/initramfs.rs). Runs under busybox
# in the guest: loads the virtio/9p/overlay modules listed in /modules/order, mounts the host's
# root file system (shared read-only over virtio-9p, tag `hostroot`) under a tmpfs overlay so the
# guest can write without touching the host, then hands over to scripts/vm/guest.sh on it; with
# `wslnet.init=systemd` it starts systemd as PID 1 instead, with the guest script as the one
# service of `wslnet-vm.target` (scripts/vm/systemd-guest.sh).
/bin/busybox --install -s /bin
echo "WSLNET-VM: BOOTED"
export PATH=/bin

die() {
    echo "WSLNET-VM: INIT-FAILED $*"
    echo "WSLNET-VM: EXIT 3"
    echo o >/proc/sysrq-trigger
    sleep 5
    poweroff -f
}

mkdir -p /proc /sys /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

for m in $(cat /modules/order); do
    insmod "/modules/$m" || die "insmod $m"
done

guest=""
init=bash
for arg in $(cat /proc/cmdline); do
    case "$arg" in
    wslnet.guest=*) guest="${arg#wslnet.guest=}" ;;
    wslnet.init=*) init="${arg#wslnet.init=}" ;;
    esac
done
[ -n "$guest" ] || die "no wslnet.guest= on the kernel command line"

mkdir -p /lower /rw /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=loose,ro hostroot /lower ||
    die "mounting the host root over 9p"
mount -t tmpfs -o size=75% tmpfs /rw || die "mounting the tmpfs for the overlay"
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot ||
    die "mounting the overlay root"
for d in proc sys dev; do
    mount --move "/$d" "/newroot/$d" || die "moving /$d"
done
[ -x "/newroot/bin/bash" ] || die "/bin/bash not found on the host root"
if [ "$init" = systemd ]; then
    [ -x /newroot/lib/systemd/systemd ] || die "systemd not found on the host root"
    # A host that is itself a container (/.dockerenv) would make systemd believe it runs in
    # one and ignore the kernel command line (systemd.unit=...). Hidden in the overlay only.
    rm -f /newroot/.dockerenv
    # The target the kernel command line names (systemd.unit=wslnet-vm.target): the basic
    # system, then the guest script, and none of the host's enabled units. Written into the
    # overlay, so the host never sees them.
    units=/newroot/etc/systemd/system
    mkdir -p $units
    cat >$units/wslnet-vm.target <<UNIT
[Unit]
Description=wslnet VM run
Requires=basic.target wslnet-vm.service
After=basic.target wslnet-vm.service
AllowIsolate=yes
UNIT
    cat >$units/wslnet-vm.service <<UNIT
[Unit]
Description=wslnet VM run: $guest
After=basic.target
[Service]
Type=oneshot
ExecStart=/bin/bash $guest
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
UNIT
    exec switch_root /newroot /lib/systemd/systemd
fi
exec switch_root /newroot /bin/bash "$guest"
