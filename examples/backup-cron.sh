#!/usr/bin/env bash
# Nightly incremental backup of one mailbox into a local zstd archive.
#
#   crontab -e
#   15 2 * * *  /opt/migrator/examples/backup-cron.sh alice@example.com imap.example.com
#
# The password is read from a file only this user can read (chmod 600):
#   /etc/migrator/<user>.password   (directory: $MIGRATOR_PASSWORD_DIR)
# Options after the third argument go to migrator (e.g. --ca-file PEM).
# Each run copies only what is new since the last one (the checkpoint lives
# beside the archive), brings flags in step, and never deletes from the archive.
# Exit codes: 0 ok, 1 some messages failed (listed in the report), 2 config,
# 3 connection/TLS/auth, 130 interrupted (the next run resumes).
set -euo pipefail
user="${1:?usage: backup-cron.sh USER IMAP_HOST [BACKUP_ROOT]}"
host="${2:?usage: backup-cron.sh USER IMAP_HOST [BACKUP_ROOT]}"
root="${3:-/var/backups/mail}"
shift $(( $# < 3 ? $# : 3 ))
pwdir="${MIGRATOR_PASSWORD_DIR:-/etc/migrator}"
safe="${user//[^A-Za-z0-9._-]/_}"
umask 077
mkdir -p "$root"
exec migrator migrate "imaps://${user/@/%40}@$host" "archive://$root/$safe.archive" \
    --src-password-file "$pwdir/$safe.password" \
    --state "$root/$safe.state.sqlite" \
    --report "$root/$safe.last-report.json" \
    --quiet "$@"
