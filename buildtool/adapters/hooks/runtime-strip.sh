#!/bin/sh
# mmdebstrap customize hook: a minbase root becomes a runtime root.
#   runtime-strip.sh TARGET PYTHON DPKG_PY KEEP...
# Every installed package outside the dependency closure of KEEP (dpkg.py purge-set) is purged
# with dpkg, so the status database and info/*.list, *.md5sums describe exactly what is left:
# what scanners read. dpkg, apt, perl and debconf go too.
set -eu
target="$1"; python="$2"; dpkg_py="$3"; shift 3
purge="$("$python" "$dpkg_py" purge-set "$target/var/lib/dpkg/status" "$@")"
# No maintainer scripts run: their prerm/postrm need perl, debconf and update-alternatives, which
# are going as well, and purge scripts of base packages could delete files that stay in use.
for p in $purge; do
  rm -f "$target/var/lib/dpkg/info/$p.prerm" "$target/var/lib/dpkg/info/$p.postrm" \
        "$target/var/lib/dpkg/info/$p":*.prerm "$target/var/lib/dpkg/info/$p":*.postrm
done
# The host's dpkg works on the target's database, so dpkg and its libraries can go in the same
# run; triggers of the packages that stay (libc-bin's ldconfig) still run, chrooted.
# shellcheck disable=SC2086
dpkg --root="$target" --purge --force-remove-essential --force-depends --force-remove-protected $purge >/dev/null

cd "$target"
# What no remaining package owns: package-manager state, logs, PAM and shadow files.
rm -rf var/cache/debconf var/lib/dpkg/alternatives var/lib/dpkg/triggers var/lib/dpkg/updates \
       var/lib/dpkg/parts var/lib/dpkg/available var/lib/dpkg/*-old var/lib/dpkg/lock* \
       var/lib/dpkg/cmethopt var/lib/dpkg/diversions var/lib/dpkg/statoverride \
       var/lib/apt var/cache/apt var/log/* var/cache/ldconfig/aux-cache \
       etc/dpkg/dpkg.cfg.d usr/share/doc-base usr/share/bug usr/share/lintian usr/share/man \
       etc/cron.daily etc/logrotate.d etc/systemd etc/pam.d etc/security \
       etc/.pwd.lock etc/*- etc/shadow etc/gshadow etc/subuid etc/subgid \
       var/lib/pam var/lib/systemd var/lib/shells.state etc/localtime etc/timezone usr/share/info/dir \
       usr/sbin/start-stop-daemon.REAL sbin/start-stop-daemon.REAL
# Docs that the path-excludes did not keep out (packages mmdebstrap extracts before dpkg reads
# them, files maintainer scripts write): only copyright files stay.
find usr/share/doc -mindepth 1 ! -type d ! -name copyright -delete
find usr/share/doc -mindepth 1 -type d -empty -delete
# apt's own configuration, except the file mmdebstrap deletes itself after the hooks.
find etc/apt -mindepth 1 ! -path etc/apt/apt.conf.d ! -path etc/apt/apt.conf.d/00mmdebstrap -delete 2>/dev/null || true
# Maintainer scripts of the packages that stay: nothing can run them now. Without info/format
# dpkg and scanners would look for libc6.list instead of libc6:amd64.list.
find var/lib/dpkg/info -type f ! -name '*.list' ! -name '*.md5sums' ! -name '*.conffiles' ! -name format -delete
# Links whose target went with a purged package (resolved inside the target, not on the host).
for l in etc/alternatives/* usr/bin/* usr/sbin/* etc/rc?.d/*; do
  [ -L "$l" ] || continue
  t="$(readlink "$l")"
  case "$t" in /*) ;; *) t="/$(dirname "$l")/$t" ;; esac
  if [ ! -e ".$t" ] && ! { [ -L ".$t" ] && [ -e ".$(readlink ".$t")" ]; }; then rm -f "$l"; fi
done
find etc/alternatives etc/rc?.d etc/init.d -maxdepth 0 -type d -empty -delete 2>/dev/null || true
