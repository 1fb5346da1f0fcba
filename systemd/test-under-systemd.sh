#!/usr/bin/env bash
# ferry's .deb under a real systemd: a minimal Debian bookworm booted with
# systemd-nspawn (it shares this host's network, so a mock Kafka broker on
# the host's loopback is reachable), the .deb installed with dpkg inside,
# and a oneshot unit that runs the checks, writes them to /results.txt and
# powers the container off. Then the host reads the broker.
#
#   systemd/test-under-systemd.sh target/dist/ferry_0.1.0_amd64.deb
#
# Needs root, debootstrap, systemd-nspawn (systemd-container) and kcat. The
# bookworm root is made once (debootstrap, ~40 s here) and kept in
# $FERRY_CI_CACHE (default ~/.cache/ferry-ci) as a tarball.
set -euo pipefail
cd "$(dirname "$0")/.."
deb=$(realpath "${1:?usage: systemd/test-under-systemd.sh FERRY.deb}")
cache=${FERRY_CI_CACHE:-$HOME/.cache/ferry-ci}
rootfs=$cache/bookworm-systemd.tar.gz
mkdir -p "$cache"
if [ ! -f "$rootfs" ]; then
    t=$(mktemp -d)
    start=$(date +%s)
    debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus \
        bookworm "$t/root" http://deb.debian.org/debian >"$t/log" 2>&1 ||
        { tail -n 20 "$t/log"; exit 1; }
    tar -C "$t/root" -czf "$rootfs.tmp" . && mv "$rootfs.tmp" "$rootfs"
    echo "systemd test: debootstrap of bookworm took $(( $(date +%s) - start )) s (cached in $rootfs)"
    rm -rf "$t"
fi

work=$(mktemp -d)
cleanup() {
    kill "$broker" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
root=$work/root
mkdir "$root"
tar -C "$root" -xzf "$rootfs"

# The broker: librdkafka's mock cluster, kept alive by a kcat consumer.
kcat -u -b 127.0.0.1:1 -C -t tele -X test.mock.num.brokers=1 -d mock -o beginning \
    >"$work/kcat.out" 2>"$work/kcat.err" &
broker=$!
bootstrap=
for _ in $(seq 100); do
    bootstrap=$(grep -o 'bootstrap.servers=[0-9.:]*' "$work/kcat.err" | head -n 1 | cut -d= -f2 || true)
    [ -n "$bootstrap" ] && break
    sleep 0.1
done
[ -n "$bootstrap" ] || { echo "systemd test: the mock broker did not start"; cat "$work/kcat.err"; exit 1; }

# Clock repair is checked with the kernel's clock marked synchronised (as
# NTP would, adjtimex ADJ_STATUS): events ferry stamps must then carry no
# `ferry-ts-unsynced` header, under the unit's sandbox too.
python3 - <<'PY'
import ctypes
class Timex(ctypes.Structure):
    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                ("rest", ctypes.c_long * 40)]
t = Timex(modes=0x0010 | 0x0004 | 0x0008, status=0, maxerror=1000, esterror=100)
state = ctypes.CDLL("libc.so.6", use_errno=True).adjtimex(ctypes.byref(t))
if state != 0:
    raise SystemExit(f"systemd test: cannot mark the clock synchronised (adjtimex {state})")
PY

cp "$deb" "$root/root/ferry.deb"
echo "FERRY_BROKERS=$bootstrap" >"$root/etc/default/ferry"
cat >"$root/usr/local/sbin/ferry-check" <<'CHECK'
#!/bin/bash
# Runs inside the container once it has booted; every line of
# /results.txt is "ok ..." or "FAIL ...", then "done".
out=/results.txt
: >"$out"
ok() { echo "ok $*" >>"$out"; }
bad() { echo "FAIL $*" >>"$out"; }
check() { local name=$1; shift; if "$@" >/dev/null 2>&1; then ok "$name"; else bad "$name"; fi; }
wait_for() {
    local name=$1 tries=$2; shift 2
    for _ in $(seq "$tries"); do
        if "$@" >/dev/null 2>&1; then ok "$name"; return 0; fi
        sleep 0.2
    done
    bad "$name"
}
sent() { ferry status -c /etc/ferry/ferry.toml --json | grep -Eq "\"sent\": ?$1[,}]"; }
journal() { journalctl -u ferry --no-pager -o cat; }

check "dpkg -i installs the package" dpkg -i /root/ferry.deb
wait_for "the service is active after READY=1" 100 systemctl is-active --quiet ferry
check "postinst enabled the service" systemctl is-enabled --quiet ferry
status=$(systemctl show -p StatusText --value ferry)
if [ -n "$status" ]; then ok "STATUS= $status"; else bad "STATUS= is empty"; fi
seq 1 20 | sed 's/^/event-/' | ferry send -c /etc/ferry/ferry.toml -t tele &&
    ok "ferry send: 20 events acknowledged" || bad "ferry send"
wait_for "20 events sent to the broker" 150 sent 20
wait_for "the watchdog is fed" 50 test "$(systemctl show -p WatchdogTimestampMonotonic --value ferry)" != 0
check "the boot id is known under the sandbox" sh -c '! journalctl -u ferry -o cat | grep -q "cannot read the boot id"'
check "the clock state is known under the sandbox" sh -c '! journalctl -u ferry -o cat | grep -q "cannot learn whether the clock"'

# Reload: a bad config is refused and the service runs on; a good one loads.
cp /etc/ferry/ferry.toml /root/ferry.toml.good
echo "this is = = not toml" >>/etc/ferry/ferry.toml
systemctl reload ferry
wait_for "a bad config is refused on reload" 50 sh -c 'journalctl -u ferry -o cat | grep -q "reload refused"'
check "the service runs on after a refused reload" systemctl is-active --quiet ferry
cp /root/ferry.toml.good /etc/ferry/ferry.toml
check "systemctl reload" systemctl reload ferry
wait_for "the config is reloaded" 50 sh -c 'journalctl -u ferry -o cat | grep -q "config reloaded"'
check "the service is active after the reload" systemctl is-active --quiet ferry
seq 21 30 | sed 's/^/event-/' | ferry send -c /etc/ferry/ferry.toml -t tele &&
    ok "ferry send after the reload" || bad "ferry send after the reload"
wait_for "30 events sent" 150 sent 30

check "systemctl stop" systemctl stop ferry
check "stopped with exit code 0" test "$(systemctl show -p ExecMainStatus --value ferry)" = 0
check "stopped cleanly (Result=success)" test "$(systemctl show -p Result --value ferry)" = success
check "dpkg -r removes the package" dpkg -r ferry
check "state kept on remove" test -f /var/lib/ferry/outbox.db
check "the config kept on remove" test -f /etc/ferry/ferry.toml
check "dpkg -P purges it" dpkg -P ferry
check "state gone on purge" test ! -e /var/lib/ferry
check "the config gone on purge" test ! -e /etc/ferry/ferry.toml
journal >/root/ferry.journal 2>&1
echo done >>"$out"
systemctl poweroff
CHECK
chmod 755 "$root/usr/local/sbin/ferry-check"
cat >"$root/etc/systemd/system/ferry-check.service" <<'UNIT'
[Unit]
Description=ferry checks under systemd
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/ferry-check
UNIT
mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
ln -s /etc/systemd/system/ferry-check.service \
    "$root/etc/systemd/system/multi-user.target.wants/ferry-check.service"

# nspawn refuses the @clock calls (adjtimex among them) to a container
# without CAP_SYS_TIME, whatever its units allow; a gateway's systemd does
# not. So the container keeps the capability, and the unit under test
# (whose bounding set is empty) is what stands between ferry and the clock.
start=$(date +%s)
timeout 300 systemd-nspawn --quiet --register=no --keep-unit --resolv-conf=off \
    --capability=CAP_SYS_TIME -D "$root" --boot \
    >"$work/console.log" 2>&1 || true
echo "systemd test: booted, checked and powered off in $(( $(date +%s) - start )) s"
cat "$root/results.txt" 2>/dev/null || true
failed=0
if ! grep -qx done "$root/results.txt" 2>/dev/null || grep -q '^FAIL' "$root/results.txt"; then
    failed=1
fi

# What reached the broker: every event once, none marked unsynchronised.
kcat -C -b "$bootstrap" -t tele -o beginning -e -q -f '%h|%s\n' >"$work/got" 2>"$work/got.err" || true
values=$(cut -d'|' -f2- "$work/got" | sort -u | wc -l)
if [ "$values" -eq 30 ] && [ "$(wc -l <"$work/got")" -eq 30 ]; then
    echo "ok the broker has the 30 events, each once"
else
    echo "FAIL the broker has $(wc -l <"$work/got") records, $values distinct (30 sent)"
    failed=1
fi
if grep -q 'ferry-ts-unsynced' "$work/got"; then
    echo "FAIL events marked ferry-ts-unsynced with the clock synchronised"
    failed=1
else
    echo "ok no event marked unsynchronised"
fi
if [ "$failed" -ne 0 ]; then
    echo "--- ferry's journal"; cat "$root/root/ferry.journal" 2>/dev/null | tail -n 40
    echo "--- console"; tail -n 40 "$work/console.log"
    exit 1
fi
echo "systemd test: passed"
