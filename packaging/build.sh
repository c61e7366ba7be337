#!/usr/bin/env bash
# Builds the .deb and .rpm of tunnel-server and tunnel-client into dist/:
#
#   packaging/build.sh                         # VERSION=0.1.0, GOARCH=amd64
#   VERSION=1.2.3 GOARCH=arm64 packaging/build.sh
#
# Static binaries (CGO_ENABLED=0, -trimpath, version stamped into
# agent.Version) go to dist/bin/$GOARCH/, then nfpm (pinned below, installed
# once into dist/tools/ from the Go module proxy) packs them with the units
# in systemd/ and the configs in packaging/ (nfpm-server.yaml,
# nfpm-client.yaml). Needs only Go; runs from the repository's root or not.
set -euo pipefail
cd "$(dirname "$0")/.."

NFPM_VERSION=v2.43.0
VERSION=${VERSION:-0.1.0}
ARCH=${GOARCH:-amd64}
DIST=dist
export PATH="$PATH:/usr/local/go/bin"

case "$VERSION" in
  [0-9]*) ;;
  *) echo "build.sh: VERSION=$VERSION must start with a digit (no leading v)" >&2; exit 2 ;;
esac

mkdir -p "$DIST/bin/$ARCH" "$DIST/tools"

echo "build.sh: binaries for linux/$ARCH, version $VERSION"
for b in tunnel-server tunnel-client; do
  CGO_ENABLED=0 GOOS=linux GOARCH="$ARCH" go build -trimpath \
    -ldflags "-s -w -X github.com/tunnelworks/tunnel/agent.Version=$VERSION" \
    -o "$DIST/bin/$ARCH/$b" "./cmd/$b"
done

# nfpm runs here, so build it for here whatever GOOS/GOARCH say.
nfpm="$DIST/tools/nfpm-$NFPM_VERSION"
if [ ! -x "$nfpm" ]; then
  echo "build.sh: installing nfpm $NFPM_VERSION into $DIST/tools"
  env -u GOOS -u GOARCH CGO_ENABLED=0 GOBIN="$PWD/$DIST/tools" \
    go install "github.com/goreleaser/nfpm/v2/cmd/nfpm@$NFPM_VERSION"
  mv "$DIST/tools/nfpm" "$nfpm"
fi

# Debian changelog (native version: changelog.gz), reproducible: fixed date
# and gzip without a timestamp.
printf '%s (%s) unstable; urgency=medium\n\n  * Release %s.\n\n -- Tunnel maintainers <tunnel@example.invalid>  %s\n' \
  tunnel "$VERSION" "$VERSION" "Thu, 01 Jan 2026 00:00:00 +0000" | gzip -9n > "$DIST/changelog.gz"

rm -f "$DIST"/tunnel-*.deb "$DIST"/tunnel-*.rpm
for short in server client; do
  for fmt in deb rpm; do
    VERSION="$VERSION" GOARCH="$ARCH" "$nfpm" package --config "packaging/nfpm-$short.yaml" \
      --packager "$fmt" --target "$DIST/" >/dev/null
  done
done
ls -1 "$DIST"/tunnel-*.deb "$DIST"/tunnel-*.rpm
