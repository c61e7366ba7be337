#!/bin/sh
# preinst of tunnel-server and tunnel-client (.deb): create the tunnel system
# user and group before the files are unpacked, so that /etc/tunnel and the
# example config arrive as root:tunnel. Idempotent. Never enables, starts or
# restarts anything. adduser is a Pre-Depends.
set -e
if ! getent group tunnel >/dev/null; then
  addgroup --system --quiet tunnel
fi
if ! getent passwd tunnel >/dev/null; then
  adduser --system --quiet --ingroup tunnel --no-create-home --home /nonexistent \
    --shell /usr/sbin/nologin --gecos "tunnel agent" tunnel
fi
exit 0
