#!/usr/bin/env bash
# Builds berth's Debian package from the workspace's release binaries with dpkg-deb
# (nothing but Debian's own tools) and prints the .deb's path on its last line.
#
#   deploy/package.sh [--version V] [--out DIR] [--no-build] [--no-compress]
#
# --version: the package version (default: the workspace version); an upgrade test
# builds the same binaries again with a higher one (--no-compress: quicker, same files).
set -euo pipefail
cd "$(dirname "$0")/.."
version=""; out="$PWD/target/deb"; build=1; compress="-Zgzip -z6"
while [ $# -gt 0 ]; do
  case "$1" in
    --version) version="$2"; shift 2;;
    --out) out="$2"; shift 2;;
    --no-build) build=0; shift;;
    --no-compress) compress="-Znone"; shift;;
    *) echo "usage: $0 [--version V] [--out DIR] [--no-build] [--no-compress]" >&2; exit 2;;
  esac
done
[ -n "$version" ] || version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
if [ "$build" = 1 ]; then cargo build --release --workspace --bins -q >&2; fi
BIN=$PWD/target/x86_64-unknown-linux-gnu/release
services="gateway images storage runtime network builder swarm shim"
for b in berth $(printf 'berth-%s ' $services); do
  [ -x "$BIN/$b" ] || { echo "missing $BIN/$b: build first" >&2; exit 1; }
done

stage=$(mktemp -d)
chmod 0755 "$stage"
trap 'rm -rf "$stage"' EXIT
install -d "$stage/DEBIAN" "$stage/usr/bin" "$stage/usr/libexec/berth" "$stage/etc/berth" \
  "$stage/lib/systemd/system" "$stage/usr/share/doc/berth" \
  "$stage/usr/share/bash-completion/completions" "$stage/usr/share/zsh/vendor-completions" \
  "$stage/usr/share/fish/vendor_completions.d"
install -m 0755 "$BIN/berth" "$stage/usr/bin/berth"
for s in $services; do install -m 0755 "$BIN/berth-$s" "$stage/usr/libexec/berth/berth-$s"; done
install -m 0644 deploy/debian/daemon.json "$stage/etc/berth/daemon.json"
install -m 0644 deploy/systemd/berth.service deploy/systemd/berth.socket "$stage/lib/systemd/system/"
install -m 0644 README.md "$stage/usr/share/doc/berth/README.md"
install -m 0644 deploy/debian/copyright "$stage/usr/share/doc/berth/copyright"
"$BIN/berth" completion bash > "$stage/usr/share/bash-completion/completions/berth"
"$BIN/berth" completion zsh > "$stage/usr/share/zsh/vendor-completions/_berth"
"$BIN/berth" completion fish > "$stage/usr/share/fish/vendor_completions.d/berth.fish"
for s in postinst prerm postrm; do install -m 0755 "deploy/debian/$s" "$stage/DEBIAN/$s"; done
echo /etc/berth/daemon.json > "$stage/DEBIAN/conffiles"

# The C library the binaries need: the highest GLIBC_ symbol version they use.
glibc=$(for f in "$stage"/usr/bin/berth "$stage"/usr/libexec/berth/*; do
          objdump -T "$f" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' ; done | sed 's/GLIBC_//' | sort -uV | tail -1)
[ -n "$glibc" ] || glibc=2.34
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat > "$stage/DEBIAN/control" <<CONTROL
Package: berth
Version: $version
Architecture: amd64
Maintainer: berth developers <berth@localhost>
Installed-Size: $size
Depends: libc6 (>= $glibc), libgcc-s1, nats-server (>= 2.9), nftables, iptables, procps, passwd, ca-certificates
Suggests: btrfs-progs, docker-cli | docker.io
Section: admin
Priority: optional
Description: Docker-compatible container engine on a NATS message bus
 berth serves the Docker Engine API on /var/run/docker.sock (socket
 activation through berth.socket); the docker CLI, docker-py and
 docker-compose use it as they use Docker. Inside, small services (images,
 storage, runtime, network, builder, swarm) work over a local nats-server.
 Containers outlive the engine's processes and its upgrades.
CONTROL
(cd "$stage" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | xargs -0 md5sum > DEBIAN/md5sums)
mkdir -p "$out"
deb="$out/berth_${version}_amd64.deb"
# root-owned files without fakeroot (--root-owner-group); gzip: every dpkg reads it, and
# it takes seconds where xz takes minutes on a busy machine
# shellcheck disable=SC2086
dpkg-deb --root-owner-group $compress --build "$stage" "$deb" >&2
echo "$deb"
