#!/bin/sh
# %pre of tunnel-server and tunnel-client (.rpm): create the tunnel system
# user and group before the files are installed, so that /etc/tunnel and the
# example config arrive as root:tunnel. Idempotent. Never enables, starts or
# restarts anything. (On Fedora adduser is useradd: call useradd by name.)
set -e
if ! getent group tunnel >/dev/null; then
  groupadd -r tunnel
fi
if ! getent passwd tunnel >/dev/null; then
  useradd -r -g tunnel -d /nonexistent -M -s /sbin/nologin -c "tunnel agent" tunnel
fi
exit 0
