#!/usr/bin/env bash
# One command for a fresh Debian machine (run as root from the repository root):
# installs Dovecot and migrator if missing, then runs examples/demo.py.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
if ! command -v dovecot >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends dovecot-imapd dovecot-pop3d
fi
PY=$(command -v python || command -v python3)
export PIP_BREAK_SYSTEM_PACKAGES=1
"$PY" -c "import migrator, imapclient, trustme" 2>/dev/null || "$PY" -m pip install -q -e '.[test]'
exec "$PY" examples/demo.py
