#!/usr/bin/env bash
# Installs GNU Mailutils imap4d (Debian 12: mailutils-imap4d 1:3.15) for the
# throwaway test servers of tests/servers/imap4d.py. Run as root by .ci/run.
# Idempotent: a no-op when the package is already installed. Never removes
# Dovecot (mailutils-imap4d "Provides: imap-server" but conflicts with nothing).
# No service is started: policy-rc.d answers 101 during the install, and the
# tests run their own imap4d (daemon mode, loopback port, private config).
set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

installed() {
    [ "$(dpkg-query -W -f='${Status}' mailutils-imap4d 2>/dev/null)" = "install ok installed" ] \
        && [ -x /usr/sbin/imap4d ]
}

if installed; then
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
policy_created=0
cleanup() {
    if [ "$policy_created" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
}
trap cleanup EXIT
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    policy_created=1
fi

apt_install() {
    apt-get install -o DPkg::Lock::Timeout=900 -y --no-install-recommends mailutils-imap4d
}
if ! apt_install; then
    # a fresh box may not have package lists yet
    apt-get -o DPkg::Lock::Timeout=900 update
    apt_install
fi

installed || { echo "mailutils-imap4d did not install" >&2; exit 1; }
command -v dovecot >/dev/null 2>&1 || echo "warning: dovecot is not installed" >&2
