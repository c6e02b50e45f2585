#!/usr/bin/env bash
# Courier-IMAP 5 (Debian 12 packages) for the test suite, UNPACKED, not installed.
#
# courier-imap declares `Conflicts: imap-server`, which dovecot-imapd provides: installing it
# would remove Dovecot.  So the .debs are only downloaded (cached in $CACHE) and unpacked with
# `dpkg -x` into $ROOT; apt installs only the plain shared libraries the unpacked binaries link
# that are missing (found with ldd).  tests/servers/courier.py runs the tree inside a private
# mount namespace, where it is overlaid on /usr, /etc and /run.
#
# Run as root on Debian 12 (CI: .ci/run).  Idempotent: a second run is a no-op (marker file).
set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export DEBIAN_FRONTEND=noninteractive

PKGS="courier-imap courier-base courier-authdaemon courier-authlib courier-authlib-userdb"
CACHE=/var/cache/migrator-test/debs/courier
ROOT=/opt/migrator-test/courier
MARKER="$ROOT/.migrator-installed"
STAMP="v1 $PKGS"
APT=(apt-get -o DPkg::Lock::Timeout=900 -q)

fail() { echo "courier.sh: FAILED: $*" >&2; exit 1; }

if [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$STAMP" ] && [ -x "$ROOT/usr/bin/imapd" ]; then
    exit 0
fi
[ "$(id -u)" = 0 ] || fail "must run as root"
command -v dpkg >/dev/null && command -v apt-get >/dev/null || fail "needs dpkg and apt-get (Debian 12)"
command -v unshare >/dev/null || fail "needs unshare (util-linux)"

# Soname -> Debian 12 package, for every library the unpacked tree links (readelf NEEDED).
declare -A LIBPKG=(
    [libcourier-unicode.so.4]=libcourier-unicode4 [libfam.so.0]=libgamin0 [libgdbm.so.6]=libgdbm6
    [libidn.so.12]=libidn12 [libltdl.so.7]=libltdl7 [libpcre.so.3]=libpcre3
    [libgnutls.so.30]=libgnutls30 [libcrypt.so.1]=libcrypt1 [libpam.so.0]=libpam0g
    [libstdc++.so.6]=libstdc++6 [libgcc_s.so.1]=libgcc-s1 [libc.so.6]=libc6
)

missing_libs() {  # sonames ldd reports "not found" for any ELF file of the tree
    local f
    find "$1" -type f \( -perm -u+x -o -name '*.so*' \) -print0 |
    while IFS= read -r -d '' f; do
        head -c 4 "$f" 2>/dev/null | grep -q 'ELF' || continue
        LD_LIBRARY_PATH="$1/usr/lib:$1/usr/lib/courier-authlib" ldd "$f" 2>/dev/null |
            awk '/not found/ {print $1}'
    done | sort -u
}

# 1. download (once) ------------------------------------------------------------------------
mkdir -p "$CACHE"
chown _apt "$CACHE" 2>/dev/null || true  # apt-get download runs as _apt when it can
need=()
for p in $PKGS; do
    compgen -G "$CACHE/${p}_*.deb" >/dev/null || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    (cd "$CACHE" && "${APT[@]}" download "${need[@]}" >/dev/null 2>"$CACHE/download.err") ||
        fail "apt-get download ${need[*]}: $(tail -3 "$CACHE/download.err")"
fi

# 2. unpack into a fresh tree ---------------------------------------------------------------
tmp="$ROOT.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
for p in $PKGS; do
    debs=("$CACHE/${p}"_*.deb)
    [ ${#debs[@]} = 1 ] || fail "expected one cached .deb for $p, found: ${debs[*]}"
    dpkg -x "${debs[0]}" "$tmp" || fail "dpkg -x ${debs[0]}"
done
# Mount points the namespace needs under the overlaid /run and /etc (see tests/servers/courier.py).
mkdir -p "$tmp/run/courier" "$tmp/etc/courier" "$tmp/var/lib/courier"
[ -x "$tmp/usr/bin/imapd" ] && [ -x "$tmp/usr/lib/courier/courier-authlib/authdaemond" ] ||
    fail "unpacked tree lacks usr/bin/imapd or authdaemond"

# 3. shared libraries -----------------------------------------------------------------------
libs=$(missing_libs "$tmp")
if [ -n "$libs" ]; then
    pkgs=()
    for so in $libs; do
        [ -n "${LIBPKG[$so]:-}" ] || fail "no package known for $so (add it to LIBPKG)"
        pkgs+=("${LIBPKG[$so]}")
    done
    # Never let apt remove anything (Dovecot above all).
    sim=$("${APT[@]}" -s install --no-install-recommends "${pkgs[@]}" 2>&1) ||
        fail "apt-get -s install ${pkgs[*]}: $(echo "$sim" | tail -3)"
    if echo "$sim" | grep -q '^Remv '; then
        fail "installing ${pkgs[*]} would remove: $(echo "$sim" | awk '/^Remv /{print $2}' | tr '\n' ' ')"
    fi
    policy_created=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        policy_created=1
    fi
    trap 'rm -rf "$tmp"; [ "$policy_created" = 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
    log="$CACHE/apt-install.log"
    if ! "${APT[@]}" install -y --no-install-recommends "${pkgs[@]}" >"$log" 2>&1; then
        fail "apt-get install ${pkgs[*]}: $(tail -5 "$log")"
    fi
    if [ "$policy_created" = 1 ]; then rm -f /usr/sbin/policy-rc.d; policy_created=0; fi
    libs=$(missing_libs "$tmp")
    [ -z "$libs" ] || fail "still not found after install: $libs"
fi

# 4. publish ----------------------------------------------------------------------------------
rm -rf "$ROOT"
mkdir -p "$(dirname "$ROOT")"
mv "$tmp" "$ROOT"
printf '%s\n' "$STAMP" > "$MARKER"
echo "courier.sh: Courier-IMAP unpacked in $ROOT"
