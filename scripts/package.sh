#!/usr/bin/env bash
# Builds otter_<version>_amd64.deb and otter_<version>_arm64.deb into
# dist/: the static binary, the systemd unit, a commented example
# device.yaml, the man page, copyright and changelog. Reproducible: file
# times and the changelog date come from SOURCE_DATE_EPOCH (default: the
# last commit's time), binaries are built with -trimpath and no build ID,
# and the same sources give byte-identical packages.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
version=${1:?usage: package.sh VERSION}
: "${SOURCE_DATE_EPOCH:=$(git log -1 --format=%ct 2>/dev/null || echo 0)}"
export SOURCE_DATE_EPOCH
nfpm=${NFPM:-$here/.bin/nfpm}
dist=${DIST:-dist}
rm -rf "$dist" && mkdir -p "$dist"
for arch in amd64 arm64; do
  mkdir -p "$dist/linux-$arch"
  CGO_ENABLED=0 GOOS=linux GOARCH=$arch go build -trimpath -buildvcs=false \
    -ldflags "-s -w -buildid= -X main.version=$version" -o "$dist/linux-$arch/otter" ./cmd/otter
done
go run ./cmd/otter man | gzip -n -9 > "$dist/otter.1.gz"
date=$(date -u -d "@$SOURCE_DATE_EPOCH" -R)
printf 'otter (%s-1) unstable; urgency=medium\n\n  * Release %s (docs/, and the release notes of the project).\n\n -- otter maintainers <maintainers@otter-fleet.example>  %s\n' \
  "$version" "$version" "$date" | gzip -n -9 > "$dist/changelog.Debian.gz"
for arch in amd64 arm64; do
  sed -e "s/\${GOARCH}/$arch/g" -e "s/\${OTTER_VERSION}/$version/g" -e "s#\./dist/#$dist/#g" packaging/nfpm.yaml > "$dist/nfpm-$arch.yaml"
  "$nfpm" package --config "$dist/nfpm-$arch.yaml" --packager deb --target "$dist/otter_${version}_${arch}.deb" >&2
done
ls "$dist"/*.deb
