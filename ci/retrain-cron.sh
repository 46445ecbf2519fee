#!/usr/bin/env bash
# Scheduled per-tenant retrain, for cron: papermill runs of nbs/58_train_tenant.ipynb, one per tenant.
# Arguments are passed to `alliedium retrain` (default: --all). Exit status: that of the retrain
# (1 if any tenant failed), 0 when another retrain still holds the lock.
#
#   crontab -e
#   15 2 * * *  /opt/alliedium/ci/retrain-cron.sh >> /opt/alliedium/var/retrain-cron.log 2>&1
set -euo pipefail
cd "$(dirname "$0")/.."
ALLIEDIUM=.venv/bin/alliedium
[ -x "$ALLIEDIUM" ] || { echo "$(pwd)/$ALLIEDIUM not found: run \`make setup\` in $(pwd) first" >&2; exit 2; }
[ $# -gt 0 ] || set -- --all

# One retrain at a time: a slow night must not overlap the next one.
VAR="${ALLIEDIUM_VAR_DIR:-var}"
mkdir -p "$VAR"
exec 9>"$VAR/retrain.lock"
if ! flock -n 9; then echo "$(date -u +%FT%TZ) a retrain is still running (lock $VAR/retrain.lock): skipped"; exit 0; fi

# The embedded default: make sure the local node is up (a no-op when it is). With
# ALLIEDIUM_IGNITE_HOSTS set the cluster is used as it is.
if [ -z "${ALLIEDIUM_IGNITE_HOSTS:-}" ]; then "$ALLIEDIUM" ignite start; fi

echo "$(date -u +%FT%TZ) alliedium retrain $*"
status=0
"$ALLIEDIUM" retrain "$@" || status=$?
echo "$(date -u +%FT%TZ) retrain finished with status $status"
exit $status
