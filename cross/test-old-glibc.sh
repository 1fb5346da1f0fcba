#!/usr/bin/env bash
# The gateway binaries on older C libraries. Each ARM release binary from
# cross/build-release.sh (target/dist/ferry-arm64, ferry-armhf) must need no
# glibc symbol newer than 2.28 (Debian buster; buster itself is gone from
# the mirror these machines reach), and must start and work under
# qemu-user against Debian bullseye's own libc (glibc 2.31: Raspberry Pi OS
# bullseye, on most deployed Pi-class gateways): --version, check-config,
# and `ferry run` storing an event sent with `ferry send`.
#
# bullseye's libc comes from `debootstrap --foreign` (unpacked, nothing
# run), kept as a tarball in $FERRY_CI_CACHE (default ~/.cache/ferry-ci).
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${FERRY_CI_CACHE:-$HOME/.cache/ferry-ci}
floor=2.28
mkdir -p "$cache"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
for pair in arm64:qemu-aarch64 armhf:qemu-arm; do
    arch=${pair%%:*}
    qemu=${pair#*:}
    bin=target/dist/ferry-$arch
    [ -x "$bin" ] || { echo "old glibc: $bin missing (run cross/build-release.sh $arch)"; exit 1; }
    newest=$(objdump -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)
    if [ "$(printf '%s\n%s\n' "$newest" "$floor" | sort -V | tail -n 1)" != "$floor" ]; then
        echo "FAIL old glibc: $bin needs GLIBC_$newest, newer than the $floor floor"
        exit 1
    fi
    echo "ok $arch binary needs glibc $newest at most (floor $floor)"

    libc=$cache/bullseye-$arch.tar.gz
    if [ ! -f "$libc" ]; then
        start=$(date +%s)
        debootstrap --foreign --variant=minbase --arch="$arch" bullseye "$work/deb-$arch" \
            http://deb.debian.org/debian >"$work/deb-$arch.log" 2>&1 ||
            { tail -n 20 "$work/deb-$arch.log"; exit 1; }
        tar -C "$work/deb-$arch" -czf "$libc.tmp" ./lib ./usr/lib ./etc && mv "$libc.tmp" "$libc"
        echo "old glibc: bullseye $arch unpacked in $(( $(date +%s) - start )) s (cached in $libc)"
    fi
    root=$work/bullseye-$arch
    mkdir -p "$root"
    tar -C "$root" -xzf "$libc"
    run() { "$qemu" -L "$root" "$bin" "$@"; }
    version=$(run --version)
    echo "ok $arch on bullseye's glibc: $version"
    data=$work/data-$arch
    run check-config >/dev/null
    FERRY_DATA_DIR=$data FERRY_BROKERS=127.0.0.1:1 FERRY_METRICS__LISTEN= \
        "$qemu" -L "$root" "$bin" run >"$work/run-$arch.log" 2>&1 &
    daemon=$!
    for _ in $(seq 100); do [ -S "$data/ferry.sock" ] && break; sleep 0.1; done
    echo "hello from $arch" | FERRY_DATA_DIR=$data run send -t t
    stored=$(FERRY_DATA_DIR=$data run status --json | grep -o '"stored": *[0-9]*' | grep -o '[0-9]*$')
    kill -TERM "$daemon"
    wait "$daemon" || { cat "$work/run-$arch.log"; echo "FAIL $arch: ferry run did not stop cleanly"; exit 1; }
    if [ "$stored" != 1 ]; then
        cat "$work/run-$arch.log"
        echo "FAIL $arch: the event was not stored (stored=$stored)"
        exit 1
    fi
    echo "ok $arch: ferry run, send and status work on bullseye's glibc"
done
echo "old glibc: passed"
