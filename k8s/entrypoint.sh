#!/bin/sh
# Creates the Bytewax recovery partitions on first start (PUI_RECOVERY_PARTS, default 4), then
# runs the given command. Without BYTEWAX_RECOVERY_DIRECTORY the job runs without recovery.
set -eu
dir=${BYTEWAX_RECOVERY_DIRECTORY:-}
if [ -n "$dir" ] && [ ! -e "$dir/part-0.sqlite3" ]; then
  mkdir -p "$dir"
  python -m bytewax.recovery "$dir" "${PUI_RECOVERY_PARTS:-4}"
fi
exec "$@"
