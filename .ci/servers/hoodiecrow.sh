#!/usr/bin/env bash
# hoodiecrow-imap (npm), the IMAP test server behind tests/gmail_standin.js, the tests' stand-in
# for Gmail (X-GM-EXT-1). Installed under $ROOT, never as a service; the tests start it on
# 127.0.0.1 with NODE_PATH=$ROOT/node_modules. Idempotent.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
ROOT=/opt/migrator-test/hoodiecrow
VERSION=2.1.0

if [ -f "$ROOT/node_modules/hoodiecrow-imap/package.json" ] &&
   grep -q "\"version\": \"$VERSION\"" "$ROOT/node_modules/hoodiecrow-imap/package.json"; then
    exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
    apt-get update
    apt-get install -y --no-install-recommends nodejs npm
fi
mkdir -p "$ROOT"
npm install --prefix "$ROOT" --no-audit --no-fund --omit=dev "hoodiecrow-imap@$VERSION"
test -f "$ROOT/node_modules/hoodiecrow-imap/lib/plugins/x-gm-ext-1.js" || { echo "hoodiecrow.sh: FAILED" >&2; exit 1; }
