#!/bin/sh
# /etc/tunnel (0750 root:tunnel) and /etc/tunnel/tls for the certificates,
# then make systemd see the new units. Never enables, starts or restarts
# anything: the operator does that once the config and certificates exist
# (systemd/README.md).
set -e
for d in /etc/tunnel /etc/tunnel/tls; do
  mkdir -p "$d"
  chown root:tunnel "$d"
  chmod 0750 "$d"
done
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  systemctl daemon-reload || true
fi
exit 0
