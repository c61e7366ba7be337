#!/usr/bin/env bash
# Builds .deb and .rpm packages of both agents into dist/:
#   packaging/build.sh                 # VERSION=0.1.0 GOARCH=amd64 by default
#   VERSION=1.2.3 GOARCH=arm64 packaging/build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${VERSION:-0.1.0}
ARCH=${GOARCH:-amd64}
DIST=dist
NFPM_VERSION=v2.43.0
mkdir -p "$DIST/bin/$ARCH" "$DIST/tools"

echo "building binaries ($ARCH, $VERSION)"
for b in tunnel-server tunnel-client; do
  CGO_ENABLED=0 GOOS=linux GOARCH="$ARCH" go build -trimpath \
    -ldflags "-s -w -X github.com/tunnelworks/tunnel/agent.Version=$VERSION" \
    -o "$DIST/bin/$ARCH/$b" "./cmd/$b"
done

if [ ! -x "$DIST/tools/nfpm" ]; then
  GOBIN="$PWD/$DIST/tools" go install "github.com/goreleaser/nfpm/v2/cmd/nfpm@$NFPM_VERSION"
fi

printf '%s (%s) unstable; urgency=medium\n\n  * Release %s.\n\n -- Tunnel maintainers <tunnel@example.invalid>  %s\n' \
  tunnel "$VERSION" "$VERSION" "$(date -R -u -d @0)" | gzip -9n > "$DIST/changelog.gz"

unit_entry() {
  printf '  - src: "systemd/%s"\n    dst: "/lib/systemd/system/%s"\n    file_info:\n      mode: 0644\n' "$1" "$1"
}
for short in server client; do
  name="tunnel-$short"
  printf '%s: statically-linked-binary [usr/bin/%s]\n' "$name" "$name" > "$DIST/lintian-$name"
  units=$(unit_entry "$name.service")
  if [ "$short" = client ]; then
    units="$units
$(unit_entry 'tunnel-client@.service')
  - src: \"systemd/bind-low-port.conf\"
    dst: \"/usr/share/doc/$name/bind-low-port.conf\"
    file_info:
      mode: 0644"
  fi
  cfg="$DIST/nfpm-$short.yaml"
  python3 - "$cfg" "$name" "$short" "$VERSION" "$ARCH" "$DIST" "$units" <<'PY'
import sys
out, name, short, version, arch, dist, units = sys.argv[1:]
s = open("packaging/nfpm.yaml.in").read()
for k, v in {"@NAME@": name, "@SHORT@": short, "@VERSION@": version, "@ARCH@": arch, "@DIST@": dist, "@UNITS@": units}.items():
    s = s.replace(k, v)
open(out, "w").write(s)
PY
  for fmt in deb rpm; do
    "$DIST/tools/nfpm" package --config "$cfg" --packager "$fmt" --target "$DIST/" >/dev/null
  done
done
ls -1 "$DIST"/*.deb "$DIST"/*.rpm
