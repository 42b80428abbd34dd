#!/usr/bin/env bash
# Installs the Debian packages berth and its tests use, if missing. Idempotent.
# Runtime: nats-server, iptables/nftables, btrfs-progs; gcc and pkg-config build C
# parts of crates (zstd). No libseccomp: the shim compiles its seccomp filters itself.
# Tests: docker-registry, busybox-static, umoci, skopeo, curl, prometheus; the package
# test: debootstrap (a fresh Debian chroot), systemd (systemd-socket-activate); the
# docker-py suite and testcontainers-python: python3-venv (their venvs' packages come
# from PyPI); docker-compose (Debian's 1.29); node and npm for dockerode (from npm).
set -euo pipefail
pkgs=(nats-server iptables nftables btrfs-progs pkg-config gcc curl
      docker-registry busybox-static umoci skopeo prometheus ca-certificates
      debootstrap systemd python3-venv docker-compose)
# node and npm: Debian's, unless a node is already there (e.g. from NodeSource)
command -v node >/dev/null 2>&1 || pkgs+=(nodejs)
command -v npm >/dev/null 2>&1 || pkgs+=(npm)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The docker CLI is the client berth serves; keep the one that is there.
if ! command -v docker >/dev/null 2>&1; then
  echo "note: no docker CLI found; install one (e.g. Debian's docker.io, then disable its dockerd) to talk to berth" >&2
fi
# Rust toolchain
if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; else
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal >/dev/null
  fi
fi
