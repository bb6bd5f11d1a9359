#!/bin/bash
# Guest side of `cargo xtask vm-test` (xtask/src/vm/), started by scripts/vm/init.sh as the
# VM's first process on the host's root file system (read-only 9p under a tmpfs overlay).
# Prepares /run, /tmp, bpffs and the booted kernel's module tree, runs each test of the plan the
# host wrote (one test per process, with a time limit), prints one `WSLNET-VM: RESULT` line per
# test and `WSLNET-VM: EXIT <rc>`, then powers the VM off. Nothing here touches the host: the VM
# has no network device, and writes go to the overlay's tmpfs.
set -u

# shellcheck source=scripts/vm/run-env.sh
source "$(dirname "$0")/run-env.sh"

mount -t tmpfs -o mode=755 tmpfs /run
# /tmp stays the host's, seen through the overlay (writes land in the tmpfs upper layer): a
# checkout under /tmp, such as a CI clone, must stay visible.
mount -t bpf -o mode=0700 bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mkdir -p /run/netns /var/run /dev/pts /dev/shm
mount -t devpts devpts /dev/pts 2>/dev/null
mount -t tmpfs tmpfs /dev/shm 2>/dev/null
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
hostname wslnet-vm
ip link set lo up

# The kernel's module tree (extracted and depmod-ed by the host) where modprobe looks for it, so the
# kernel's own module requests (rtnl-link-veth, sch_clsact, nft_*, ...) load too.
kver=$(uname -r)
mkdir -p /usr/lib/modules
ln -sfn "$WSLNET_MODULES" "/usr/lib/modules/$kver"
echo /usr/sbin/modprobe >/proc/sys/kernel/modprobe
# Its config where `wslnet-agent check` looks (the overlay keeps this off the host).
mkdir -p /boot
cp "$WSLNET_KERNEL_ROOT/boot/config-$kver" /boot/ 2>/dev/null
for m in veth sch_ingress cls_bpf act_bpf nf_tables sch_netem tun; do
    modprobe "$m" || echo "WSLNET-VM: NOTE modprobe $m failed"
done

echo "WSLNET-VM: KERNEL $(uname -r) $(uname -v)"
echo "WSLNET-VM: CHECK-BEGIN"
"$WSLNET_AGENT_BIN" check 2>&1 | sed 's/^/  check| /'
echo "WSLNET-VM: CHECK-END"

logs=/tmp/wslnet-vm-logs
mkdir -p "$logs"
failed=0
n=0
cd "$WSLNET_REPO/tests" || finish 3

# The agent, left to pick (--attach-mode auto), attaches as this kernel allows (tcx from 6.6,
# clsact before: WSLNET_AUTO_ATTACH_MODE, from xtask's kernel table) and says so in
# `status --json` and in its metrics. Run as plan entry `builtin auto-mode`.
auto_mode_check() {
    set -x
    local pins=/run/wslnet-vm-bpffs a=wslvm-a b=wslvm-b
    ip netns add $a && ip netns add $b || return 1
    ip -n $a link set lo up
    ip link add eth0 netns $a type veth peer name eth0 netns $b || return 1
    ip -n $a addr add 10.231.0.1/24 dev eth0 && ip -n $a link set eth0 up
    ip -n $b addr add 10.231.0.2/24 dev eth0 && ip -n $b link set eth0 up
    mkdir -p $pins && mount -t bpf -o mode=0700 bpf $pins || return 1
    ip netns exec $a "$WSLNET_AGENT_BIN" run --iface eth0 --attach-mode auto --no-learn \
        --clamp 10.231.0.2=1372 --pin-dir $pins/wslnet --metrics-addr 127.0.0.1:9786 &
    local agent=$! ok=1 i st metrics mode=$WSLNET_AUTO_ATTACH_MODE
    for i in $(seq 1 60); do
        st=$(ip netns exec $a "$WSLNET_AGENT_BIN" status --json --pin-dir $pins/wslnet 2>&1)
        metrics=$(ip netns exec $a curl -sf http://127.0.0.1:9786/metrics)
        if grep -q "\"mode\": *\"$mode\"" <<<"$st" &&
            grep -q "^wslnet_interface_attached{interface=\"eth0\",mode=\"$mode\"} 1" <<<"$metrics"; then
            ok=0
            break
        fi
        sleep 0.5
    done
    echo "$st"
    grep '^wslnet_interface_attached\|^wslnet_build_info' <<<"$metrics"
    ip netns exec $a tc filter show dev eth0 ingress
    kill -TERM $agent
    wait $agent
    umount $pins
    ip netns del $a
    ip netns del $b
    return $ok
}

# Each plan line: label <TAB> executable <TAB> exact test name.
while IFS=$'\t' read -r label exe name; do
    [ -n "$label" ] || continue
    n=$((n + 1))
    log="$logs/$n.log"
    echo "WSLNET-VM: START $label"
    start=${EPOCHREALTIME/./}
    if [ "$exe" = builtin ]; then
        (auto_mode_check) </dev/null >"$log" 2>&1
        rc=$?
        [ $rc -eq 0 ] && echo "test result: ok. 1 passed (builtin)" >>"$log"
    else
        timeout --kill-after=10 "$WSLNET_TEST_TIMEOUT" \
            "$exe" --exact "$name" --test-threads=1 --nocapture </dev/null >"$log" 2>&1
        rc=$?
    fi
    ms=$(((${EPOCHREALTIME/./} - start) / 1000))
    secs="$((ms / 1000)).$(((ms % 1000) / 100))"
    if [ $rc -eq 0 ] && grep -q '^test result: ok. 1 passed' "$log" && grep -q 'WSLNET-SKIP:' "$log"; then
        # The test decided it cannot run on this kernel and said why (tests/src/netns.rs); with
        # --nocapture its line may follow libtest's "test NAME ... ".
        echo "WSLNET-VM: RESULT SKIP $label $secs $(grep -o -m1 'WSLNET-SKIP: .*' "$log" | cut -d' ' -f2-)"
    elif [ $rc -eq 0 ] && grep -q '^test result: ok. 1 passed' "$log"; then
        echo "WSLNET-VM: RESULT PASS $label $secs"
    else
        failed=$((failed + 1))
        why="exit $rc"
        [ $rc -eq 124 ] || [ $rc -eq 137 ] && why="timed out after ${WSLNET_TEST_TIMEOUT}s"
        [ $rc -eq 0 ] && why="ran no test"
        echo "WSLNET-VM: OUTPUT-BEGIN $label"
        tail -n 200 "$log" | sed 's/^/  | /'
        echo "WSLNET-VM: OUTPUT-END $label"
        echo "WSLNET-VM: RESULT FAIL $label $secs $why"
    fi
    # A failed test can leave namespaces or bpffs mounts behind: clear them for the next one.
    ip -all netns delete 2>/dev/null
done <"$run_dir/plan.tsv"

if [ $failed -eq 0 ]; then finish 0; else finish 1; fi
