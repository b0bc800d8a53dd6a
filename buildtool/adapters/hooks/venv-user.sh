#!/bin/sh
# mmdebstrap customize hook: the venv every image's Python runs from, and the non-root user.
#   venv-user.sh TARGET [--with-pip]
# python runs inside TARGET (mmdebstrap has mounted /proc and /dev). --without-pip needs neither
# python3-venv nor ensurepip: Debian's venv looks for ensurepip only when pip is wanted. The
# builder root asks for pip (it has python3-venv); the runtime root has none.
set -eu
target="$1"
pip="--without-pip"
[ "${2:-}" = "--with-pip" ] && pip=""
# shellcheck disable=SC2086
chroot "$target" /usr/bin/python3 -m venv $pip /opt/venv
grep -q '^appuser:' "$target/etc/passwd" \
  || echo 'appuser:x:10001:10001:appuser:/home/appuser:/usr/sbin/nologin' >> "$target/etc/passwd"
grep -q '^appuser:' "$target/etc/group" || echo 'appuser:x:10001:' >> "$target/etc/group"
mkdir -p "$target/home/appuser"
chown 10001:10001 "$target/home/appuser"
