#!/usr/bin/env bash
# A provider switch (cut-over) in three steps, one mailbox:
#
#   1. cutover.sh bulk   SRC DST           # while users keep working on the old server; rerun at will
#   2. (switch the MX record to the new provider)
#   3. cutover.sh follow SRC DST [30m]     # mail that still lands on the old server, and flags people
#                                          # change there, follow on; then both sides are verified
#
# SRC and DST are account URLs (imaps://alice@old.example.com); passwords come from
# MIGRATOR_SRC_PASSWORD / MIGRATOR_DST_PASSWORD, or from --src-password-file / --dst-password-file.
# Options after the arguments are connection options, given to migrate and verify alike
# (--ca-file PEM, --src-password-file F, ...); options of the copy itself (--workers 8, --preset
# gmail, --delete-extra ...) go in MIGRATOR_CUTOVER_OPTS.
# Both steps share one checkpoint (cutover.state.sqlite in the working directory, or
# $MIGRATOR_CUTOVER_STATE), so step 3 copies only what is new, and a kill -9 anywhere is settled
# by running the step again.
# Step 3 ends after DURATION (default 30m) or at Ctrl-C / SIGTERM (after the change in hand;
# exit 0 when everything seen was copied), then runs `migrator verify`: exit 0 means identical.
set -euo pipefail
step="${1:?usage: cutover.sh bulk|follow SRC DST [DURATION] [migrator options]}"
src="${2:?usage: cutover.sh bulk|follow SRC DST [DURATION] [migrator options]}"
dst="${3:?usage: cutover.sh bulk|follow SRC DST [DURATION] [migrator options]}"
shift 3
duration=30m
if [ "$step" = follow ] && [ $# -gt 0 ] && [[ "$1" != -* ]]; then
    duration="$1"
    shift
fi
state="${MIGRATOR_CUTOVER_STATE:-cutover.state.sqlite}"
umask 077
read -r -a run_opts <<< "${MIGRATOR_CUTOVER_OPTS:-}"
case "$step" in
    bulk)
        exec migrator migrate "$src" "$dst" --state "$state" --report cutover-bulk.json "${run_opts[@]}" "$@" ;;
    follow)
        migrator migrate "$src" "$dst" --state "$state" --report cutover-follow.json \
            --follow --follow-for "$duration" "${run_opts[@]}" "$@"
        exec migrator verify "$src" "$dst" "$@" ;;
    *)
        echo "cutover.sh: unknown step '$step' (bulk or follow)" >&2
        exit 2 ;;
esac
