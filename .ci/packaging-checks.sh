#!/usr/bin/env bash
# CI checks of what operators install, from a clean clone on a fresh Debian
# machine (as root: it apt-get installs what is missing):
#
#   .ci/packaging-checks.sh
#
#  1. the systemd units (systemd/*.service, and the drop-ins in systemd/):
#     systemd-analyze verify, and systemd-analyze security must rate every
#     shipped unit 2.0 or better (exposure <= 2.0; lower is better);
#  2. packaging/build.sh makes the .deb and .rpm of both agents;
#  3. their contents: binaries, units, conffiles, modes and owners, metadata,
#     maintainer scripts that never enable, start or restart anything;
#  4. the example configs validate once certificates exist;
#  5. lintian --fail-on error on the .debs;
#  6. both binaries cross-build for linux/amd64, linux/arm64, darwin/arm64
#     and windows/amd64.
#
# Exits non-zero at the first failure, saying what failed. Takes about a
# minute once the Go module cache is warm.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
started=$SECONDS

fail() { echo "packaging-checks: FAIL: $*" >&2; exit 1; }
step() { echo "== $*"; }
ok() { echo "   ok: $*"; }

command -v go >/dev/null || fail "no Go toolchain in PATH (nor in /usr/local/go/bin)"

# --- tools -----------------------------------------------------------------
missing=()
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v lintian >/dev/null || missing+=(lintian)
command -v rpm >/dev/null || missing+=(rpm)
command -v dpkg-deb >/dev/null && command -v dpkg-architecture >/dev/null || missing+=(dpkg-dev)
if ((${#missing[@]})); then
  step "installing ${missing[*]}"
  [ "$(id -u)" = 0 ] || fail "need root to apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || fail "apt-get update"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || fail "apt-get install ${missing[*]}"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# --- 1. systemd units --------------------------------------------------------
# systemd-analyze verify checks the units against an offline root: the
# system's own units (for network-online.target and friends) and stub
# executables at the paths the units run, so that "command not found" can
# only mean a wrong path in a unit. It prints nothing for a good unit and
# exits 0 even for unknown keys, so any output is a failure.
step "systemd units"
make_root() { # make_root DIR: an offline root with the shipped units
  local root=$1 bin
  mkdir -p "$root/etc/systemd/system" "$root/usr/lib/systemd"
  cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
  for bin in /usr/bin/tunnel-server /usr/bin/tunnel-client /bin/kill; do
    mkdir -p "$root$(dirname "$bin")"
    printf '#!/bin/sh\nexit 0\n' > "$root$bin"
    chmod 0755 "$root$bin"
  done
  cp systemd/*.service "$root/etc/systemd/system/"
}
# check_unit ROOT UNIT MAX: verify UNIT, print its exposure, fail above MAX
# (MAX empty: report only).
check_unit() {
  local root=$1 unit=$2 max=$3 out score
  out=$(systemd-analyze verify --root="$root" --man=no "$unit" 2>&1) \
    && [ -z "$out" ] || fail "systemd-analyze verify $unit:
$out"
  out=$(systemd-analyze security --offline=yes --root="$root" --no-pager "$unit" 2>&1) \
    || fail "systemd-analyze security $unit:
$out"
  score=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$out")
  [ -n "$score" ] || fail "systemd-analyze security $unit: no exposure level in:
$out"
  if [ -n "$max" ]; then
    awk -v s="$score" -v m="$max" 'BEGIN { exit !(s <= m) }' \
      || fail "$unit: exposure $score is above $max; what it rates worst:
$(grep '✗' <<<"$out" | awk '{ print $NF "\t" $0 }' | sort -rn | cut -f2- | head -15)"
    ok "$unit verifies; exposure $score (at most $max)"
  else
    ok "$unit verifies; exposure $score"
  fi
}
units=(systemd/tunnel-server.service systemd/tunnel-client.service systemd/tunnel-client@.service)
for u in "${units[@]}"; do [ -f "$u" ] || fail "$u is missing"; done
make_root "$tmp/units"
check_unit "$tmp/units" tunnel-server.service 2.0
check_unit "$tmp/units" tunnel-client.service 2.0
check_unit "$tmp/units" tunnel-client@edge.service 2.0
# The drop-ins the README documents, applied as an operator would.
make_root "$tmp/dropins"
mkdir -p "$tmp/dropins/etc/systemd/system/tunnel-server.service.d" \
  "$tmp/dropins/etc/systemd/system/tunnel-client@bgp.service.d"
cp systemd/no-low-port.conf "$tmp/dropins/etc/systemd/system/tunnel-server.service.d/"
cp systemd/bind-low-port.conf "$tmp/dropins/etc/systemd/system/tunnel-client@bgp.service.d/"
echo "   with systemd/no-low-port.conf:"
check_unit "$tmp/dropins" tunnel-server.service 2.0
echo "   with systemd/bind-low-port.conf (the client then holds CAP_NET_BIND_SERVICE):"
check_unit "$tmp/dropins" tunnel-client@bgp.service ""

# --- 2. packages -------------------------------------------------------------
step "packaging/build.sh"
version=0.1.0
VERSION=$version GOARCH=amd64 packaging/build.sh >/dev/null || fail "packaging/build.sh"

# --- 3. package contents ------------------------------------------------------
# expect NAME WHAT LISTING LINE...: every LINE is a line of LISTING
expect() {
  local name=$1 what=$2 listing=$3 line
  shift 3
  for line in "$@"; do
    grep -qxF -- "$line" <<<"$listing" || fail "$name: $what lacks \"$line\"; it has:
$listing"
  done
}
# forbid NAME SCRIPTS: the maintainer scripts never enable, start or restart
forbid_starts() {
  local name=$1 scripts=$2
  if grep -v '^[[:space:]]*#' <<<"$scripts" \
      | grep -Eq 'systemctl.*[[:space:]](enable|start|restart|try-restart|reload-or-restart|preset)([[:space:]]|$)|deb-systemd-invoke|deb-systemd-helper[[:space:]]+enable|invoke-rc\.d|update-rc\.d'; then
    fail "$name: a maintainer script enables, starts or restarts a service:
$scripts"
  fi
}

for short in server client; do
  name=tunnel-$short
  deb=dist/${name}_${version}_amd64.deb
  rpm=dist/${name}-${version}-1.x86_64.rpm
  [ -f "$deb" ] || fail "packaging/build.sh made no $deb"
  [ -f "$rpm" ] || fail "packaging/build.sh made no $rpm"
  step "$deb"

  units=("-rw-r--r-- root/root ./lib/systemd/system/$name.service")
  [ $short = client ] && units+=("-rw-r--r-- root/root ./lib/systemd/system/tunnel-client@.service")
  # mode owner path, one a line
  listing=$(dpkg-deb -c "$deb" | awk '{ print $1, $2, $6 }')
  expect "$deb" "the contents" "$listing" \
    "-rwxr-xr-x root/root ./usr/bin/$name" \
    "${units[@]}" \
    "drwxr-x--- root/tunnel ./etc/tunnel/" \
    "-rw-r----- root/tunnel ./etc/tunnel/$short.hcl" \
    "-rw-r--r-- root/root ./usr/share/doc/$name/copyright" \
    "-rw-r--r-- root/root ./usr/share/doc/$name/changelog.gz"
  ok "binary, units, /etc/tunnel 0750 root:tunnel, $short.hcl 0640 root:tunnel, copyright, changelog"
  [ "$(dpkg-deb -I "$deb" conffiles)" = "/etc/tunnel/$short.hcl" ] \
    || fail "$deb: conffiles is not exactly /etc/tunnel/$short.hcl: $(dpkg-deb -I "$deb" conffiles)"
  ok "conffiles: /etc/tunnel/$short.hcl"
  control=$(dpkg-deb -f "$deb" Package Version Architecture Maintainer Pre-Depends)
  expect "$deb" "the control file" "$control" \
    "Package: $name" "Version: $version" "Architecture: amd64" \
    "Maintainer: Tunnel maintainers <tunnel@example.invalid>" "Pre-Depends: adduser"
  ok "control: $name $version amd64, Pre-Depends: adduser"
  mkdir -p "$tmp/deb/$name"
  dpkg-deb -e "$deb" "$tmp/deb/$name/DEBIAN"
  for s in preinst postinst postrm; do
    [ -x "$tmp/deb/$name/DEBIAN/$s" ] || fail "$deb has no executable $s"
    sh -n "$tmp/deb/$name/DEBIAN/$s" || fail "$deb: $s: syntax error"
  done
  grep -q 'adduser --system' "$tmp/deb/$name/DEBIAN/preinst" || fail "$deb: preinst does not create the tunnel user"
  forbid_starts "$deb" "$(cat "$tmp/deb/$name/DEBIAN"/*inst "$tmp/deb/$name/DEBIAN"/*rm)"
  ok "maintainer scripts: user made in preinst; nothing enabled, started or restarted"
  dpkg-deb -x "$deb" "$tmp/deb/$name/root"
  if [ "$(dpkg --print-architecture)" = amd64 ]; then
    got=$("$tmp/deb/$name/root/usr/bin/$name" version) || fail "$deb: $name version failed"
    [[ $got == "$name $version "* ]] || fail "$deb: '$name version' says '$got', want $version"
    ok "'$name version': $got"
  fi

  step "$rpm"
  info=$(rpm -qp --qf '%{NAME} %{VERSION} %{ARCH} %{LICENSE}\n' "$rpm" 2>/dev/null)
  [ "$info" = "$name $version x86_64 MIT" ] || fail "$rpm: metadata '$info'"
  # path mode owner group isconfig, one a line
  dump=$(rpm -qp --dump "$rpm" 2>/dev/null | awk '{ print $1, $5, $6, $7, $8 }')
  units=("/lib/systemd/system/$name.service 0100644 root root 0")
  [ $short = client ] && units+=("/lib/systemd/system/tunnel-client@.service 0100644 root root 0")
  expect "$rpm" "the contents" "$dump" \
    "/usr/bin/$name 0100755 root root 0" \
    "${units[@]}" \
    "/etc/tunnel 040750 root tunnel 0" \
    "/etc/tunnel/$short.hcl 0100640 root tunnel 1" \
    "/usr/share/doc/$name/copyright 0100644 root root 0"
  flags=$(rpm -qp --qf '[%{FILENAMES} %{FILEFLAGS:fflags}\n]' "$rpm" 2>/dev/null | grep "^/etc/tunnel/$short.hcl ")
  [[ $flags == *c*n* ]] || fail "$rpm: /etc/tunnel/$short.hcl is not %config(noreplace): $flags"
  ok "binary, units, /etc/tunnel 0750 root:tunnel, $short.hcl %config(noreplace) 0640 root:tunnel"
  rpm -qp --requires "$rpm" 2>/dev/null | grep -qx '/usr/sbin/useradd' || fail "$rpm does not require /usr/sbin/useradd"
  scripts=$(rpm -qp --scripts "$rpm" 2>/dev/null)
  grep -q 'useradd -r' <<<"$scripts" || fail "$rpm: %pre does not create the tunnel user"
  forbid_starts "$rpm" "$scripts"
  ok "scripts: user made in %pre; nothing enabled, started or restarted"
done

for s in packaging/scripts/*.sh; do sh -n "$s" || fail "$s: syntax error"; done

# Opt-in, as it changes the machine: install both .debs for real, check the
# user, the modes and that nothing got enabled, then purge and remove what
# the install created.
if [ "${PACKAGING_INSTALL_TEST:-}" = 1 ]; then
  step "install test (PACKAGING_INSTALL_TEST=1)"
  [ "$(id -u)" = 0 ] || fail "the install test needs root"
  ! dpkg -s tunnel-server >/dev/null 2>&1 && ! dpkg -s tunnel-client >/dev/null 2>&1 && [ ! -e /etc/tunnel ] \
    || fail "the install test needs a machine without tunnel-server, tunnel-client and /etc/tunnel"
  had_user=$(getent passwd tunnel || true)
  dpkg -i "dist/tunnel-server_${version}_amd64.deb" "dist/tunnel-client_${version}_amd64.deb" >/dev/null || fail "dpkg -i"
  getent passwd tunnel | grep -q ':/nonexistent:/usr/sbin/nologin$' || fail "no tunnel system user after install"
  for f in /etc/tunnel /etc/tunnel/tls /etc/tunnel/server.hcl /etc/tunnel/client.hcl; do
    got=$(stat -c '%a %U:%G' "$f")
    case $f in *.hcl) want="640 root:tunnel" ;; *) want="750 root:tunnel" ;; esac
    [ "$got" = "$want" ] || fail "installed $f is $got, want $want"
  done
  [ ! -e /etc/systemd/system/multi-user.target.wants/tunnel-server.service ] || fail "the install enabled tunnel-server"
  [ ! -e /etc/systemd/system/multi-user.target.wants/tunnel-client.service ] || fail "the install enabled tunnel-client"
  dpkg --purge tunnel-server tunnel-client >/dev/null 2>&1 || fail "dpkg --purge"
  rm -rf /etc/tunnel
  if [ -z "$had_user" ]; then
    deluser --system --quiet tunnel 2>/dev/null || true
    ! getent group tunnel >/dev/null || delgroup --system --quiet tunnel
  fi
  ok "installed (user tunnel, /etc/tunnel 0750, configs 0640 root:tunnel, nothing enabled), purged"
fi

# --- 4. example configs ---------------------------------------------------------
# Issue the certificates they name (in a temporary directory standing in for
# /etc/tunnel/tls) and validate them with host binaries.
step "example configs"
host="$tmp/host"
CGO_ENABLED=0 go build -o "$host/" ./cmd/tunnel-server ./cmd/tunnel-client || fail "go build for this host"
tls="$tmp/tls"
"$host/tunnel-server" cert ca create --dir "$tmp/ca" --name "packaging-checks CA" >/dev/null || fail "cert ca create"
"$host/tunnel-server" cert issue --ca-dir "$tmp/ca" --server server --dns tunnel.example.net --out-dir "$tls" >/dev/null \
  || fail "cert issue --server"
"$host/tunnel-server" cert issue --ca-dir "$tmp/ca" --client client --out-dir "$tls" >/dev/null || fail "cert issue --client"
cp "$tmp/ca/ca.crt" "$tls/"
for short in server client; do
  grep -q '/etc/tunnel/tls/' "packaging/examples/$short.hcl" || fail "packaging/examples/$short.hcl names no file in /etc/tunnel/tls/"
  sed "s|/etc/tunnel/tls/|$tls/|g" "packaging/examples/$short.hcl" > "$tmp/$short.hcl"
  out=$("$host/tunnel-$short" validate -config "$tmp/$short.hcl" 2>&1) \
    || fail "packaging/examples/$short.hcl does not validate with certificates in place:
$out"
  ok "packaging/examples/$short.hcl: ${out#"$tmp/"}"
done

# --- 5. lintian ------------------------------------------------------------------
step "lintian --fail-on error"
out=$(lintian --fail-on error dist/*.deb 2>&1) || fail "lintian reports errors:
$out"
out=$(grep -v '^running with root privileges' <<<"$out" || true)
[ -z "$out" ] || sed 's/^/   /' <<<"$out"
ok "no errors ($(grep -c '^E:' <<<"$out" || true) errors, $(grep -c '^W:' <<<"$out" || true) warnings, $(grep -c '^[IP]:' <<<"$out" || true) info/pedantic; intentional tags overridden in packaging/lintian/)"

# --- 6. cross-builds ---------------------------------------------------------------
step "cross-builds"
for target in linux/amd64 linux/arm64 darwin/arm64 windows/amd64; do
  GOOS=${target%/*} GOARCH=${target#*/} CGO_ENABLED=0 \
    go build -trimpath -o "$tmp/cross/$target/" ./cmd/tunnel-server ./cmd/tunnel-client \
    || fail "go build for $target"
  ok "$target"
done

echo "packaging-checks: all passed in $((SECONDS - started))s"
