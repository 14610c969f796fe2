#!/usr/bin/env bash
# Installs what otter's tests and benchmarks need on Debian 12, idempotently:
# Debian packages (with the arm64 architecture for the release corpus), Nix
# settings for sandboxed cross-builds. Safe to run again: it changes only
# what is missing.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "setup: run as root or install sudo" >&2; exit 1; }
  SUDO=sudo
fi

packages=(
  docker-registry   # a real OCI registry on loopback for the tests
  skopeo            # interop: a standard client pulls a bundle
  nix-bin           # real Nix: path-info, nix-store --dump, builds
  busybox-static    # a builder for test derivations that needs no nixpkgs
  qemu-user-static  # aarch64 emulation
  iproute2          # network namespaces and tc tbf links for the fleet drill
  patchelf          # the release corpus generator
  zstd xz-utils xdelta3 bsdiff  # benchmark baselines
  fdisk dosfstools mtools e2fsprogs fakeroot bmap-tools  # SD-card images without root
  qemu-system-arm qemu-efi-aarch64  # booting otter's generic image (the boot proof)
  lintian systemd   # checking the .deb packages and the systemd unit
  chromium          # rendering otter diff's HTML report in the tests
  ca-certificates git python3
)

updated=0
apt_update() {
  if [ "$updated" = 0 ]; then
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    updated=1
  fi
}

if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  echo "setup: adding the arm64 architecture (the corpus uses arm64 Debian packages)"
  $SUDO dpkg --add-architecture arm64
  apt_update
fi

missing=()
for p in "${packages[@]}"; do
  if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]; then
    missing+=("$p")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt_update
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Nix: single-user as root, sandboxed builds, no substituters (nothing outside
# is reachable), aarch64 through binfmt.
conf=/etc/nix/nix.conf
want=(
  "build-users-group = nixbld"
  "sandbox = true"
  "sandbox-fallback = false"
  "substituters ="
  "extra-platforms = aarch64-linux"
  "experimental-features = nix-command flakes"
)
$SUDO mkdir -p /etc/nix
$SUDO touch "$conf"
for line in "${want[@]}"; do
  key=${line%% =*}
  if ! grep -qxF "$line" "$conf"; then
    tmp=$(mktemp)
    grep -v "^${key} *=" "$conf" > "$tmp" || true
    echo "$line" >> "$tmp"
    $SUDO install -m 0644 "$tmp" "$conf"
    rm -f "$tmp"
  fi
done
if ! getent group nixbld >/dev/null; then
  echo "setup: creating the nixbld group and build users"
  $SUDO groupadd -r nixbld
  for i in $(seq 1 8); do
    $SUDO useradd -r -g nixbld -G nixbld -d /var/empty -s /usr/sbin/nologin "nixbld$i" 2>/dev/null || true
  done
fi

# The boot proof's arm64 Debian packages, unpacked (not installed) into
# $kit: the kernel and its modules, busybox-static, systemd-boot. Redone
# only when the kernel package Debian serves changes.
kit=/var/cache/otter/arm64
kit_kernel() {
  local k
  k=$(apt-cache depends linux-image-arm64:arm64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  echo "${k%:arm64}"
}
kit_download() { # into the current directory
  apt-get download -q "$kernel_pkg:arm64" busybox-static:arm64 systemd-boot-efi:arm64 >/dev/null 2>&1
}
kernel_pkg=$(kit_kernel)
if [ -z "$kernel_pkg" ]; then
  apt_update
  kernel_pkg=$(kit_kernel)
fi
if [ ! -e "$kit/.done-$kernel_pkg" ]; then
  dl=$(mktemp -d)
  chmod 755 "$dl"
  if ! (cd "$dl" && kit_download); then
    # Stale package lists: Debian may have moved to another kernel ABI.
    apt_update
    kernel_pkg=$(kit_kernel)
    rm -f "$dl"/*.deb
    (cd "$dl" && kit_download) || { echo "setup: cannot download $kernel_pkg, busybox-static and systemd-boot-efi for arm64" >&2; rm -rf "$dl"; exit 1; }
  fi
  echo "setup: unpacking $kernel_pkg, busybox-static and systemd-boot-efi (arm64) into $kit"
  $SUDO rm -rf "$kit.new"
  $SUDO mkdir -p "$kit.new"
  for deb in "$dl"/*.deb; do $SUDO dpkg-deb -x "$deb" "$kit.new"; done
  rm -rf "$dl"
  $SUDO touch "$kit.new/.done-$kernel_pkg"
  $SUDO rm -rf "$kit"
  $SUDO mv "$kit.new" "$kit"
fi

# aarch64 emulation: qemu-aarch64-static through binfmt_misc with the F flag,
# registered by otter itself (idempotent; lasts until reboot).
here=$(cd "$(dirname "$0")/.." && pwd)
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
(cd "$here" && go build -o "$bin/otter" ./cmd/otter)
$SUDO "$bin/otter" binfmt install -q
