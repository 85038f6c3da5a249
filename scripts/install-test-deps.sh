#!/bin/sh
# Installs the Debian packages whose servers and tools the tests run, when a binary is missing.
# Quiet and a no-op when everything is present. As root it runs apt-get; otherwise it prints the
# apt-get command to run and exits 1. `--check` only reports (exit 1 when something is missing).
#
# Services are kept from starting during the install (policy-rc.d): the tests start their own servers
# on free ports, and a distribution broker or database left on 1883/8086/8428 only gets in the way.
set -eu

check_only=0
case "${1:-}" in
    --check) check_only=1 ;;
    "") ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

# binary:package pairs. mosquitto lives in /usr/sbin, which is not on a normal user's PATH.
# chromium: the web console's browser tests (tests/console), driven by Playwright; never a browser download.
REQUIRED="
mosquitto:mosquitto
influxd:influxdb
victoria-metrics:victoria-metrics
snmpget:snmp
snmpwalk:snmp
systemd-analyze:systemd
chromium:chromium
etcd:etcd-server
etcdctl:etcd-client
"

have() {
    PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin" command -v "$1" >/dev/null 2>&1
}

missing=""
for pair in $REQUIRED; do
    bin=${pair%%:*}
    pkg=${pair#*:}
    if ! have "$bin"; then
        case " $missing " in
            *" $pkg "*) ;;
            *) missing="${missing:+$missing }$pkg" ;;
        esac
    fi
done

# Debian's libseccomp binding, for the test that applies dcim.service's system-call filter
# (tests/systemd/sandbox.py loads it from /usr/lib/python3/dist-packages).
if [ ! -e /usr/lib/python3/dist-packages/seccomp.cpython-311-x86_64-linux-gnu.so ] \
        && ! ls /usr/lib/python3/dist-packages/seccomp*.so >/dev/null 2>&1; then
    missing="${missing:+$missing }python3-seccomp"
fi

[ -z "$missing" ] && exit 0

if [ "$check_only" = 1 ]; then
    echo "missing test packages: $missing" >&2
    echo "install them with: sudo apt-get install -y --no-install-recommends $missing" >&2
    exit 1
fi

if [ "$(id -u)" != 0 ]; then
    echo "The tests need these Debian packages, which are not installed: $missing" >&2
    echo "Install them as root, then run the tests again:" >&2
    echo "    sudo apt-get update && sudo apt-get install -y --no-install-recommends $missing" >&2
    echo "(or run $0 as root)" >&2
    exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "apt-get not found: install these packages (Debian names) with your package manager: $missing" >&2
    exit 1
fi

# Exit code 101 from policy-rc.d tells invoke-rc.d not to start services from maintainer scripts.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    made_policy=1
fi
cleanup() {
    if [ "$made_policy" = 1 ]; then rm -f "$policy"; fi
}
trap cleanup EXIT INT TERM

echo "installing test packages: $missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086 # word splitting of the package list is intended
apt-get install -y -qq --no-install-recommends $missing >/dev/null

# Some packages start their service anyway (systemd as PID 1 ignores policy-rc.d); stop those, because
# the tests must never talk to a distribution-wide server by accident.
# Only the packages installed just now: a service the machine already had is its owner's business.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    for unit in $missing; do
        case "$unit" in
            etcd-server) systemctl disable --now etcd >/dev/null 2>&1 || true ;;
            mosquitto|influxdb|victoria-metrics) systemctl disable --now "$unit" >/dev/null 2>&1 || true ;;
        esac
    done
fi

still=""
for pair in $REQUIRED; do
    bin=${pair%%:*}
    if ! have "$bin"; then still="${still:+$still }$bin"; fi
done
if [ -n "$still" ]; then
    echo "still missing after install: $still" >&2
    exit 1
fi
