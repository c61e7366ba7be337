#!/bin/sh
# Make systemd forget the removed units. The tunnel user and group, the
# certificates in /etc/tunnel/tls and the state in /var/lib/tunnel stay,
# also on purge: the other agent's package or a reinstall may use them, and
# keys are not ours to delete. Remove them by hand if wanted:
#   rm -rf /etc/tunnel /var/lib/tunnel && deluser --system tunnel
set -e
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  systemctl daemon-reload || true
fi
exit 0
