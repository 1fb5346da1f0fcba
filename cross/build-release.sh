#!/usr/bin/env bash
# Release artifacts for the gateways and the host: stripped binary, tarball
# and .deb (arm64, armhf, amd64) with the systemd unit, sysusers entry and
# the example config as a conffile. Uses the plain cargo path with the
# linkers in .cargo/config.toml (Debian cross gcc); `cross` works too where
# Docker runs: CARGO=cross cross/build-release.sh
#
# Prints each binary's size and the newest glibc symbol version it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
out=target/dist
rm -rf "$out" && mkdir -p "$out"

build() { # target deb-arch strip-tool
    local target=$1 arch=$2 strip=$3
    if [ "$target" = host ]; then
        $CARGO build --release --locked
        bin=target/release/ferry
    else
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
    cat > "$stage/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    systemd-sysusers /usr/lib/sysusers.d/ferry.conf || true
    systemctl daemon-reload || true
fi
POSTINST
    chmod 755 "$stage/DEBIAN/postinst"
    dpkg-deb --root-owner-group --build "$stage" "$out/ferry_${version}_$arch.deb" >/dev/null
    rm -rf "$stage"
}

build aarch64-unknown-linux-gnu arm64 aarch64-linux-gnu-strip
build armv7-unknown-linux-gnueabihf armhf arm-linux-gnueabihf-strip
build host amd64 strip
ls -l "$out"
