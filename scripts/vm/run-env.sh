# Sourced by scripts/vm/guest.sh and scripts/vm/systemd-guest.sh, first thing in the guest: finds
# the run directory the host wrote (kernel command line `wslnet.run=`), defines `finish RC` (the
# exit line the host reads, then power-off) and sources the run's env.sh: PATH, HOME,
# WSLNET_REPO, WSLNET_KERNEL_ROOT, WSLNET_MODULES, WSLNET_TEST_TIMEOUT, WSLNET_AGENT_BIN,
# WSLNET_AUTO_ATTACH_MODE (xtask/src/vm/mod.rs writes them).

run_dir=""
for arg in $(</proc/cmdline); do
    case "$arg" in
    wslnet.run=*) run_dir="${arg#wslnet.run=}" ;;
    esac
done

finish() {
    echo "WSLNET-VM: EXIT $1"
    sync
    echo o >/proc/sysrq-trigger
    exec sleep 10 2>/dev/null
}

if [ -z "$run_dir" ] || [ ! -f "$run_dir/env.sh" ]; then
    echo "WSLNET-VM: INIT-FAILED no run directory (wslnet.run=) with env.sh"
    finish 3
fi
# shellcheck disable=SC1091
source "$run_dir/env.sh"
