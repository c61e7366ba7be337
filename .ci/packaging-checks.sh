#!/usr/bin/env bash
# CI checks of what operators install: the packages (contents, conffiles,
# lintian) and the cross-builds. The systemd units are verified and rated
# by the Go tests (cmd/internal/cli, TestUnitsVerifyAndScore), which need
# systemd-analyze: .ci/run installs it before the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "packaging-checks: $*" >&2; exit 1; }

VERSION=0.1.0 packaging/build.sh

for short in server client; do
  deb=dist/tunnel-${short}_0.1.0_amd64.deb
  rpm=dist/tunnel-${short}-0.1.0-1.x86_64.rpm
  contents=$(dpkg-deb -c "$deb")
  for f in ./usr/bin/tunnel-$short ./lib/systemd/system/tunnel-$short.service ./etc/tunnel/$short.hcl ./usr/share/doc/tunnel-$short/copyright; do
    grep -q " $f\$" <<<"$contents" || fail "$deb lacks $f"
  done
  grep -q -- "-rw-r----- .*./etc/tunnel/$short.hcl" <<<"$contents" || fail "$deb: /etc/tunnel/$short.hcl is not mode 0640"
  grep -qx "/etc/tunnel/$short.hcl" <<<"$(dpkg-deb -I "$deb" conffiles)" || fail "$deb: /etc/tunnel/$short.hcl is not a conffile"
  if grep -Eq 'systemctl +(enable|start|restart)' <<<"$(dpkg-deb -I "$deb" postinst)"; then
    fail "$deb: the maintainer script starts or enables a service"
  fi
  grep -qx "/usr/bin/tunnel-$short" <<<"$(rpm -qlp "$rpm" 2>/dev/null)" || fail "$rpm lacks /usr/bin/tunnel-$short" # "/usr/bin/tunnel-$short" || fail "$rpm lacks /usr/bin/tunnel-$short"
  grep -qx "/etc/tunnel/$short.hcl" <<<"$(rpm -qp --configfiles "$rpm" 2>/dev/null)" || fail "$rpm: config" # "/etc/tunnel/$short.hcl" || fail "$rpm: /etc/tunnel/$short.hcl is not a config file"
  echo "ok: $deb, $rpm"
done
grep -q "tunnel-client@.service" <<<"$(dpkg-deb -c dist/tunnel-client_0.1.0_amd64.deb)" || fail "client package lacks the templated unit"

lintian --fail-on error dist/*.deb || fail "lintian reports errors"
echo "ok: lintian (no errors)"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for target in linux/amd64 linux/arm64 darwin/arm64 windows/amd64; do
  GOOS=${target%/*} GOARCH=${target#*/} CGO_ENABLED=0 go build -trimpath -o "$tmp/$target/" ./cmd/tunnel-server ./cmd/tunnel-client \
    || fail "cross-build for $target"
  echo "ok: cross-build $target"
done
