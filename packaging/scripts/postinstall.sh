#!/bin/sh
# Create the tunnel system user and the config directory. Never enables,
# starts or restarts anything: the operator decides when.
set -e
if ! getent group tunnel >/dev/null; then
  if command -v addgroup >/dev/null 2>&1; then addgroup --system tunnel >/dev/null; else groupadd -r tunnel; fi
fi
if ! getent passwd tunnel >/dev/null; then
  if command -v adduser >/dev/null 2>&1; then
    adduser --system --ingroup tunnel --no-create-home --home /nonexistent --shell /usr/sbin/nologin tunnel >/dev/null
  else
    useradd -r -g tunnel -d /nonexistent -s /sbin/nologin tunnel
  fi
fi
mkdir -p /etc/tunnel/tls
chown root:tunnel /etc/tunnel /etc/tunnel/tls
chmod 0750 /etc/tunnel /etc/tunnel/tls
for f in /etc/tunnel/server.hcl /etc/tunnel/client.hcl; do
  if [ -f "$f" ]; then chown root:tunnel "$f"; chmod 0640 "$f"; fi
done
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  systemctl daemon-reload || true
fi
exit 0
