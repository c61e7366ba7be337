#!/bin/sh
# The tunnel user and /etc/tunnel stay (other agents or a reinstall may use
# them); remove them by hand if wanted.
set -e
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  systemctl daemon-reload || true
fi
exit 0
