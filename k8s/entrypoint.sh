#!/bin/sh
# Entrypoint of the program-user-info image: prepares what a Bytewax process in a StatefulSet
# needs, then runs the given command (default: python -m bytewax.run dataflow:flow).
#
# In a StatefulSet pod (BYTEWAX_POD_NAME and BYTEWAX_STATEFULSET_NAME set; ordinal = the
# process id bytewax.run derives from the pod name):
#   - hostfile: when BYTEWAX_HOSTFILE_PATH is set and the file is absent, writes one address per
#     process, <statefulset>-<i>.<service>.<namespace>.svc:<port>, i = 0 .. BYTEWAX_REPLICAS-1
#     (service BYTEWAX_SERVICE_NAME, default the StatefulSet name; POD_NAMESPACE; port
#     BYTEWAX_PORT, default 9999). An ordinal >= BYTEWAX_REPLICAS stops the pod: the process
#     count and the replica count disagree.
#   - recovery: when BYTEWAX_RECOVERY_DIRECTORY is set, pod <i> keeps recovery partition <i>
#     of PUI_RECOVERY_PARTS (default 1) on its own volume, created when absent; pods with
#     i >= PUI_RECOVERY_PARTS hold none. Every partition thus exists exactly once in the cluster,
#     so the state survives restarts and any scaling to >= PUI_RECOVERY_PARTS processes.
# Elsewhere (one process, e.g. docker run): all PUI_RECOVERY_PARTS partitions in the directory,
# as scripts/run-streaming does.
set -eu

parts=${PUI_RECOVERY_PARTS:-1}
ordinal=""
if [ -n "${BYTEWAX_POD_NAME:-}" ] && [ -n "${BYTEWAX_STATEFULSET_NAME:-}" ]; then
  ordinal=${BYTEWAX_POD_NAME#"$BYTEWAX_STATEFULSET_NAME"-}
  case "$ordinal" in
    '' | *[!0-9]*)
      echo "pui-entrypoint: pod $BYTEWAX_POD_NAME is not <$BYTEWAX_STATEFULSET_NAME>-<n>" >&2
      exit 64
      ;;
  esac
fi

if [ -n "$ordinal" ] && [ -n "${BYTEWAX_REPLICAS:-}" ]; then
  if [ "$ordinal" -ge "$BYTEWAX_REPLICAS" ]; then
    echo "pui-entrypoint: pod ordinal $ordinal but BYTEWAX_REPLICAS=$BYTEWAX_REPLICAS:" \
      "scale through the overlay's replicas (never kubectl scale)" >&2
    exit 64
  fi
  hostfile=${BYTEWAX_HOSTFILE_PATH:-}
  if [ -n "$hostfile" ] && [ ! -e "$hostfile" ]; then
    service=${BYTEWAX_SERVICE_NAME:-$BYTEWAX_STATEFULSET_NAME}
    domain=$service${POD_NAMESPACE:+.$POD_NAMESPACE.svc}
    mkdir -p "$(dirname "$hostfile")"
    i=0
    : >"$hostfile.tmp"
    while [ "$i" -lt "$BYTEWAX_REPLICAS" ]; do
      echo "$BYTEWAX_STATEFULSET_NAME-$i.$domain:${BYTEWAX_PORT:-9999}" >>"$hostfile.tmp"
      i=$((i + 1))
    done
    mv "$hostfile.tmp" "$hostfile"
  fi
fi

dir=${BYTEWAX_RECOVERY_DIRECTORY:-}
if [ -n "$dir" ]; then
  mkdir -p "$dir"
  if [ -z "$ordinal" ]; then
    if [ ! -e "$dir/part-0.sqlite3" ]; then
      python -m bytewax.recovery "$dir" "$parts"
    fi
  elif [ "$ordinal" -lt "$parts" ] && [ ! -e "$dir/part-$ordinal.sqlite3" ]; then
    fresh="$dir/.init-$$"
    rm -rf "$fresh"
    mkdir "$fresh"
    python -m bytewax.recovery "$fresh" "$parts"
    mv "$fresh/part-$ordinal.sqlite3" "$dir/"
    rm -rf "$fresh"
    echo "pui-entrypoint: created recovery partition $ordinal of $parts in $dir" >&2
  fi
fi

exec "$@"
