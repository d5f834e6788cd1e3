#!/bin/sh
# The image's ./entrypoint-recovery.sh (WORKDIR /app): the Bytewax Helm chart's recovery init
# container runs `sh -c "sh ./entrypoint-recovery.sh"` with BYTEWAX_RECOVERY_DIRECTORY and
# BYTEWAX_RECOVERY_PARTS. Creates the recovery partitions once; an existing set is kept.
set -eu
dir=${BYTEWAX_RECOVERY_DIRECTORY:?BYTEWAX_RECOVERY_DIRECTORY is not set}
parts=${BYTEWAX_RECOVERY_PARTS:-1}
if [ -e "$dir/part-0.sqlite3" ]; then
  echo "entrypoint-recovery.sh: recovery partitions already in $dir" >&2
  exit 0
fi
mkdir -p "$dir"
exec python -m bytewax.recovery "$dir" "$parts"
