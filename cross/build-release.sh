#!/usr/bin/env bash
# Release artifacts for the gateways and the host: stripped binary, tarball
# and .deb (arm64, armhf, amd64) with the systemd unit, sysusers entry and
# the example config as a conffile. Uses the plain cargo path with the
# linkers in .cargo/config.toml (Debian cross gcc); `cross` works too where
# Docker runs: CARGO=cross cross/build-release.sh
#
# Prints each binary's size and the newest glibc symbol version it needs.
#
#   cross/build-release.sh            # arm64, armhf and amd64
#   cross/build-release.sh amd64      # only the host's (the systemd test)
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
# Gateways run older C libraries than the build machine (Raspberry Pi OS
# bullseye has glibc 2.31, buster 2.28). With cargo-zigbuild and zig (PyPI:
# ziglang) the ARM binaries link against glibc 2.28's symbols; without
# them the plain cargo path builds against the cross toolchain's glibc
# (2.36 here), and the .deb's Depends says so.
GLIBC_FLOOR=${GLIBC_FLOOR:-2.28}
zigbuild=no
if [ "$CARGO" = cargo ] && command -v cargo-zigbuild >/dev/null &&
    { command -v zig >/dev/null || python3 -m ziglang version >/dev/null 2>&1; }; then
    zigbuild=yes
fi
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
out=target/dist
rm -rf "$out" && mkdir -p "$out"

build() { # target deb-arch strip-tool
    local target=$1 arch=$2 strip=$3
    if [ "$target" = host ]; then
        $CARGO build --release --locked
        bin=target/release/ferry
    elif [ "$zigbuild" = yes ]; then
        cargo zigbuild --release --locked --target "$target.$GLIBC_FLOOR"
        bin=target/$target/release/ferry
    else
        echo "build-release: no cargo-zigbuild/zig: $target links against this machine's glibc" >&2
        $CARGO build --release --locked --target "$target"
        bin=target/$target/release/ferry
    fi
    $strip -o "$out/ferry-$arch" "$bin"
    local glibc
    glibc=$(objdump -T "$out/ferry-$arch" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
    printf '%-8s %8d bytes  needs %s\n' "$arch" "$(stat -c %s "$out/ferry-$arch")" "$glibc"

    local stage="$out/stage-$arch"
    install -Dm755 "$out/ferry-$arch" "$stage/usr/bin/ferry"
    install -Dm644 systemd/ferry.service "$stage/lib/systemd/system/ferry.service"
    install -Dm644 systemd/ferry.sysusers "$stage/usr/lib/sysusers.d/ferry.conf"
    install -Dm644 systemd/ferry.toml "$stage/etc/ferry/ferry.toml"
    install -Dm644 README.md "$stage/usr/share/doc/ferry/README.md"
    tar -C "$stage" -czf "$out/ferry-$version-$arch.tar.gz" .

    mkdir -p "$stage/DEBIAN"
    cat > "$stage/DEBIAN/control" <<CONTROL
Package: ferry
Version: $version
Architecture: $arch
Maintainer: ferry developers <ferry@localhost>
Depends: libc6 (>= ${glibc#GLIBC_}), systemd
Section: net
Priority: optional
Description: store-and-forward telemetry producer for gateways
 Local events into a durable SQLite outbox, out to Kafka in LZ4 batches.
CONTROL
    echo /etc/ferry/ferry.toml > "$stage/DEBIAN/conffiles"
    # Maintainer scripts the Debian way (as dh_installsystemd writes them):
    # enable and start on install, restart on upgrade, stop on remove,
    # state and config gone only on purge.
    cat > "$stage/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ] || [ "$1" = abort-upgrade ]; then
    systemd-sysusers /usr/lib/sysusers.d/ferry.conf || true
    if command -v deb-systemd-helper >/dev/null; then
        deb-systemd-helper unmask ferry.service >/dev/null || true
        if deb-systemd-helper --quiet was-enabled ferry.service; then
            deb-systemd-helper enable ferry.service >/dev/null || true
        else
            deb-systemd-helper update-state ferry.service >/dev/null || true
        fi
    else
        systemctl enable ferry.service >/dev/null 2>&1 || true
    fi
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
        if [ -n "$2" ]; then action=restart; else action=start; fi
        if command -v deb-systemd-invoke >/dev/null; then
            deb-systemd-invoke "$action" ferry.service >/dev/null || true
        else
            systemctl "$action" ferry.service || true
        fi
    fi
fi
POSTINST
    cat > "$stage/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
    if command -v deb-systemd-invoke >/dev/null; then
        deb-systemd-invoke stop ferry.service >/dev/null || true
    else
        systemctl stop ferry.service || true
    fi
fi
PRERM
    cat > "$stage/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
if [ "$1" = remove ] && command -v deb-systemd-helper >/dev/null; then
    deb-systemd-helper mask ferry.service >/dev/null || true
fi
if [ "$1" = purge ]; then
    if command -v deb-systemd-helper >/dev/null; then
        deb-systemd-helper purge ferry.service >/dev/null || true
        deb-systemd-helper unmask ferry.service >/dev/null || true
    fi
    # The outbox (undelivered events, dead letters) goes only on purge.
    rm -rf /var/lib/ferry /etc/ferry
fi
POSTRM
    chmod 755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/prerm" "$stage/DEBIAN/postrm"
    dpkg-deb --root-owner-group --build "$stage" "$out/ferry_${version}_$arch.deb" >/dev/null
    rm -rf "$stage"
}

# Which to build: all three by default, or those named (arm64 armhf amd64).
wanted=("${@:-arm64 armhf amd64}")
wanted=" ${wanted[*]} "
[[ $wanted == *" arm64 "* ]] && build aarch64-unknown-linux-gnu arm64 aarch64-linux-gnu-strip
[[ $wanted == *" armhf "* ]] && build armv7-unknown-linux-gnueabihf armhf arm-linux-gnueabihf-strip
[[ $wanted == *" amd64 "* ]] && build host amd64 strip
ls -l "$out"
