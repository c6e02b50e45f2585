#!/usr/bin/env bash
# Cyrus IMAP 3.6 (Debian 12 packages) for the test suite (tests/servers/cyrus.py), as root.
#
# cyrus-imapd Conflicts: imap-server, which dovecot-imapd provides, so the packages are NOT
# installed: their .debs are downloaded into a cache dir and unpacked with `dpkg -x` into
# $ROOT; only the plain shared libraries the unpacked binaries link (their Depends: lib*),
# and sasl2-bin (saslpasswd2, for the test servers' private sasldb), are apt-installed,
# with --no-remove so apt can never take Dovecot away. A system user `cyrus` (group mail)
# is created: Cyrus drops to it at start. Nothing is started, no service is enabled.
#
# Idempotent: a second run is a no-op once $ROOT/.migrator-installed exists.
set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export DEBIAN_FRONTEND=noninteractive

ROOT=${MIGRATOR_CYRUS_ROOT:-/opt/migrator-test/cyrus}
CACHE=${MIGRATOR_DEB_CACHE:-/var/cache/migrator-test/debs}
PKGS=(cyrus-common cyrus-imapd)
# Linked only by cyr_virusscan (libclamav12) and notifyd (libzephyr4); the tests run neither.
SKIP_LIBS=" libclamav12 libzephyr4 "
SKIP_BINS=" cyr_virusscan notifyd "
MARKER="$ROOT/.migrator-installed"
APT=(apt-get -o DPkg::Lock::Timeout=900 -q -y)

die() { echo "cyrus.sh: ERROR: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"

if [ -f "$MARKER" ] && [ -x "$ROOT/usr/lib/cyrus/bin/master" ] \
        && getent passwd cyrus >/dev/null && command -v saslpasswd2 >/dev/null; then
    exit 0
fi

started=$(date +%s)
LOG=$(mktemp /tmp/cyrus-install.XXXXXX.log)
policy_created=0
keep_log=0
cleanup() {
    if [ "$policy_created" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
    rm -rf "$ROOT.tmp.$$"
    if [ "$keep_log" = 0 ]; then rm -f "$LOG"; fi
}
trap cleanup EXIT
fail() {
    keep_log=1
    echo "cyrus.sh: ERROR: $*" >&2
    echo "--- last lines of $LOG ---" >&2
    tail -n 30 "$LOG" >&2
    exit 1
}

dovecot_before=$(dpkg-query -W -f='${Status}' dovecot-imapd 2>/dev/null || true)

# Keep any postinst from starting services.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    policy_created=1
fi

# 1. The .debs, downloaded once into the cache.
mkdir -p "$CACHE"
if getent passwd _apt >/dev/null; then chown _apt "$CACHE"; fi  # apt downloads as _apt
have_debs() {
    local p
    for p in "${PKGS[@]}"; do compgen -G "$CACHE/${p}_*.deb" >/dev/null || return 1; done
}
if ! have_debs; then
    if ! (cd "$CACHE" && "${APT[@]}" download "${PKGS[@]}") >>"$LOG" 2>&1; then
        "${APT[@]}" update >>"$LOG" 2>&1 || fail "apt-get update failed"
        (cd "$CACHE" && "${APT[@]}" download "${PKGS[@]}") >>"$LOG" 2>&1 \
            || fail "apt-get download ${PKGS[*]} failed"
    fi
fi
debs=()
for p in "${PKGS[@]}"; do
    deb=$(ls "$CACHE/${p}"_*.deb | sort -V | tail -n 1)
    debs+=("$deb")
done
ver=$(dpkg-deb -f "${debs[0]}" Version)
[ "$(dpkg-deb -f "${debs[1]}" Version)" = "$ver" ] || die "cached .debs have different versions: ${debs[*]}"

# 2. Unpack into $ROOT (via a temp dir, so a half-unpacked tree is never left in place).
tmp="$ROOT.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
for deb in "${debs[@]}"; do dpkg -x "$deb" "$tmp" || fail "dpkg -x $deb failed"; done
rm -rf "$ROOT"
mv "$tmp" "$ROOT"

# 3. The shared libraries they declare (lib* in Depends), and saslpasswd2.
libs=()
for deb in "${debs[@]}"; do
    for dep in $(dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed -e 's/([^)]*)//g' -e 's/|.*//' -e 's/:any//' -e 's/ //g'); do
        case "$dep" in
            lib*) case "$SKIP_LIBS" in *" $dep "*) ;; *) libs+=("$dep") ;; esac ;;
        esac
    done
done
install_libs() { "${APT[@]}" install --no-install-recommends --no-remove "${libs[@]}" sasl2-bin >>"$LOG" 2>&1; }
if ! install_libs; then
    "${APT[@]}" update >>"$LOG" 2>&1 || fail "apt-get update failed"
    install_libs || fail "apt-get install ${libs[*]} sasl2-bin failed"
fi

# 4. Every unpacked binary and library must find its libraries.
missing=""
libdir="$ROOT/usr/lib/x86_64-linux-gnu"
for f in "$ROOT"/usr/lib/cyrus/bin/* "$ROOT"/usr/sbin/* "$libdir"/*.so*; do
    [ -f "$f" ] && [ ! -L "$f" ] || continue
    case "$SKIP_BINS" in *" $(basename "$f") "*) continue ;; esac
    head -c 4 "$f" | grep -q 'ELF' || continue
    nf=$(LD_LIBRARY_PATH="$libdir" ldd "$f" 2>/dev/null | grep 'not found' || true)
    if [ -n "$nf" ]; then missing="$missing$f:\n$nf\n"; fi
done
[ -z "$missing" ] || die "unresolved libraries:\n$(printf '%b' "$missing")"
sasl_plugins=$(ls /usr/lib/*/sasl2/libsasldb.so* /usr/lib/sasl2/libsasldb.so* 2>/dev/null || true)
[ -n "$sasl_plugins" ] || die "SASL sasldb plugin (libsasl2-modules-db) missing"
command -v saslpasswd2 >/dev/null || die "saslpasswd2 missing after installing sasl2-bin"
command -v unshare >/dev/null || die "unshare (util-linux) missing: the test servers run in a mount namespace"

# 5. The user Cyrus drops to (as Debian's cyrus-common postinst does: system user, group mail).
if ! getent passwd cyrus >/dev/null; then
    useradd --system --gid mail --home-dir /var/lib/cyrus --no-create-home \
        --shell /usr/sbin/nologin cyrus >>"$LOG" 2>&1 || getent passwd cyrus >/dev/null \
        || fail "useradd cyrus failed"
fi

# 6. Dovecot must still be there.
if [ -n "$dovecot_before" ]; then
    [ "$(dpkg-query -W -f='${Status}' dovecot-imapd 2>/dev/null || true)" = "$dovecot_before" ] \
        || die "dovecot-imapd changed state: was '$dovecot_before'"
fi

echo "$ver" > "$MARKER"
echo "cyrus: Cyrus IMAP $ver unpacked in $ROOT ($(( $(date +%s) - started ))s)"
