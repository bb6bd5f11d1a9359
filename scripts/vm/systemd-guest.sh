#!/bin/bash
# The systemd boot of `cargo xtask vm-test` (xtask/src/vm/): scripts/vm/init.sh started systemd
# as PID 1 on the host's root (read-only 9p under a tmpfs overlay) with this script as the one
# oneshot service of `wslnet-vm.target`. It installs the agent as the Debian package does (the
# binary in /usr/bin, packaging/systemd/wslnet-agent.service, packaging/deb/wslnet.toml), starts
# the unit under its own hardening and checks, on the VM's own eth0 (one end of a veth pair whose
# other end, in a namespace, takes no frame over 1372 bytes and says nothing: a black hole; the VM
# has no network device):
#   - it attaches, and the first SYN leaving eth0 carries the first-contact clamp (MSS 1240 for
#     1280); the agent then measures the path (raw ICMP and TCP, under the unit's capabilities)
#     and the next SYN carries MSS 1332 (1372);
#   - `systemctl stop` leaves the SYN clamped (--keep-attached keeps the pins);
#   - `systemctl start` adopts the pins (the log says adopted=true) and the SYN stays clamped;
#   - after `kill -9` of the agent, Restart=always brings it back, still clamping.
# Prints one `WSLNET-VM: RESULT` line for plan label vm::systemd_runs_the_packaged_unit, then
# powers the VM off. Writes land in the overlay's tmpfs, never on the host.
set -u

label=vm::systemd_runs_the_packaged_unit
# shellcheck source=scripts/vm/run-env.sh
source "$(dirname "$0")/run-env.sh"

# The kernel's module tree where modprobe looks (as guest.sh does).
kver=$(uname -r)
mkdir -p /usr/lib/modules
ln -sfn "$WSLNET_MODULES" "/usr/lib/modules/$kver"
echo /usr/sbin/modprobe >/proc/sys/kernel/modprobe
for m in veth sch_ingress cls_bpf; do modprobe "$m"; done

echo "WSLNET-VM: BOOTED-SYSTEMD $(systemctl --version | head -1)"
echo "WSLNET-VM: START $label"
log=/tmp/wslnet-systemd.log
start=${EPOCHREALTIME/./}

fail() {
    set +x
    echo "FAILED: $*"
    systemctl status --no-pager wslnet-agent
    journalctl --no-pager -u wslnet-agent | tail -n 40
    exit 1
}

# The MSS option of the next SYN leaving eth0 for the peer, as the peer's side sees it.
syn_mss() {
    # Our own connection's SYN, by a source port chosen here: the agent's TCP probes to the same
    # port (a re-measurement after a restart) send SYNs too, with the MSS of the size they test.
    # The connect may be refused (python3 http.server still starting): only the SYN matters.
    local cap=/tmp/syn.txt port=$((40000 + RANDOM % 20000))
    ip netns exec wslvm-peer timeout 20 tcpdump -l -n -c 1 -i eth0 \
        "src port $port and tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn" >"$cap" 2>/dev/null &
    local dump=$!
    sleep 1
    timeout 5 python3 -c "
import socket
s = socket.socket()
s.bind(('10.232.0.1', $port))
s.settimeout(3)
try:
    s.connect(('10.232.0.2', 8080))
except OSError:
    pass" 2>/dev/null
    wait $dump
    grep -o 'mss [0-9]*' "$cap" | head -1 | cut -d' ' -f2
}

attached() {
    wslnet-agent status --json 2>/dev/null | grep -q '"name": *"eth0"'
}

# The clamp entry the agent measured for the peer, bytes ("" while there is none).
measured() {
    wslnet-agent status --json 2>/dev/null | python3 -c '
import json, sys
for c in json.load(sys.stdin)["clamps"]:
    if c["net"] == "10.232.0.2/32" and c["origin"] == "probed":
        print(c["mtu"])'
}

scenario() {
    set -x
    ip netns add wslvm-peer || fail "ip netns add"
    ip link add eth0 type veth peer name eth0 netns wslvm-peer || fail "veth"
    ip addr add 10.232.0.1/24 dev eth0 && ip link set eth0 up
    ip -n wslvm-peer addr add 10.232.0.2/24 dev eth0 && ip -n wslvm-peer link set eth0 up
    ip -n wslvm-peer link set lo up
    # The black hole: frames over 1372 bytes die at the peer, and no ICMP error says so.
    ip -n wslvm-peer link set eth0 mtu 1372
    ip netns exec wslvm-peer python3 -m http.server --bind 10.232.0.2 8080 >/dev/null 2>&1 &
    sleep 2
    local without
    without=$(syn_mss)
    [ "$without" = 1460 ] || fail "before the agent, a SYN should carry MSS 1460, not '$without'"

    # Installed as the package installs it (packaging/ and [package.metadata.deb]).
    install -m 755 "$WSLNET_AGENT_BIN" /usr/bin/wslnet-agent
    install -m 644 "$WSLNET_REPO/packaging/systemd/wslnet-agent.service" /usr/lib/systemd/system/
    install -d /etc/wslnet && install -m 644 "$WSLNET_REPO/packaging/deb/wslnet.toml" /etc/wslnet/
    systemctl daemon-reload
    systemctl start wslnet-agent || fail "systemctl start"
    for _ in $(seq 1 120); do attached && break; sleep 0.5; done
    attached || fail "the unit did not attach to eth0"
    [ "$(syn_mss)" = 1240 ] || fail "the first SYN should carry the first-contact MSS 1240"
    for _ in $(seq 1 120); do [ -n "$(measured)" ] && break; sleep 0.5; done
    [ "$(measured)" = 1372 ] || fail "the agent measured '$(measured)', not 1372"
    [ "$(syn_mss)" = 1332 ] || fail "once measured, a SYN should carry MSS 1332"

    systemctl stop wslnet-agent || fail "systemctl stop"
    [ "$(systemctl is-active wslnet-agent)" = inactive ] || fail "the unit did not stop"
    [ "$(syn_mss)" = 1332 ] || fail "after systemctl stop, a SYN should still carry MSS 1332"

    systemctl start wslnet-agent || fail "systemctl start (again)"
    for _ in $(seq 1 120); do
        journalctl --no-pager -u wslnet-agent | grep -q 'adopted=true' && break
        sleep 0.5
    done
    journalctl --no-pager -u wslnet-agent | grep 'attached' | tail -n 2
    journalctl --no-pager -u wslnet-agent | grep -q 'adopted=true' ||
        fail "the second start did not adopt the pinned attachment"
    [ "$(syn_mss)" = 1332 ] || fail "after the second start, a SYN should carry MSS 1332"

    local pid
    pid=$(systemctl show -p MainPID --value wslnet-agent)
    kill -9 "$pid"
    for _ in $(seq 1 60); do
        local now
        now=$(systemctl show -p MainPID --value wslnet-agent)
        [ "$now" != 0 ] && [ "$now" != "$pid" ] && break
        sleep 0.5
    done
    [ "$(systemctl show -p NRestarts --value wslnet-agent)" -ge 1 ] ||
        fail "Restart=always did not restart the killed agent"
    [ "$(syn_mss)" = 1332 ] || fail "after the restart, a SYN should carry MSS 1332"
    systemctl show -p CapabilityBoundingSet -p NoNewPrivileges -p ProtectSystem wslnet-agent
    systemctl stop wslnet-agent
    wslnet-agent detach
    echo "all checks passed"
}

(scenario) </dev/null >"$log" 2>&1
rc=$?
ms=$(((${EPOCHREALTIME/./} - start) / 1000))
secs="$((ms / 1000)).$(((ms % 1000) / 100))"
if [ $rc -eq 0 ]; then
    echo "WSLNET-VM: RESULT PASS $label $secs"
    finish 0
fi
echo "WSLNET-VM: OUTPUT-BEGIN $label"
tail -n 200 "$log" | sed 's/^/  | /'
echo "WSLNET-VM: OUTPUT-END $label"
echo "WSLNET-VM: RESULT FAIL $label $secs exit $rc"
finish 1
