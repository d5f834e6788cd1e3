#!/bin/sh
# The image's ./entrypoint.sh (WORKDIR /app), for the Bytewax Helm chart and waxctl, which renders
# that chart: their StatefulSet starts the dataflow container with
#   sh -c "sh ./entrypoint.sh"
# and passes BYTEWAX_PYTHON_FILE_PATH (/var/bytewax/<python file>), BYTEWAX_POD_NAME,
# BYTEWAX_STATEFULSET_NAME, BYTEWAX_REPLICAS, BYTEWAX_HOSTFILE_PATH (written by the chart's
# init container), BYTEWAX_RECOVERY_DIRECTORY and BYTEWAX_KEEP_CONTAINER_ALIVE.
#
# Runs python -m bytewax.run on the chart's python file when it exists (its one line,
# `from dataflow import flow`, gives bytewax.run the job's flow), else on dataflow:flow, through
# the image's entrypoint (k8s/entrypoint.sh: hostfile when absent, this pod's recovery
# partition when absent). With BYTEWAX_KEEP_CONTAINER_ALIVE=true the container stays up after
# the dataflow ends, as the chart's own images do (for kubectl exec when troubleshooting).
set -u

target=dataflow:flow
file=${BYTEWAX_PYTHON_FILE_PATH:-}
if [ -n "$file" ]; then
  if [ -f "$file" ]; then
    target=$file
  else
    echo "entrypoint.sh: $file not found, running dataflow:flow" >&2
  fi
fi

if [ "${BYTEWAX_KEEP_CONTAINER_ALIVE:-false}" != true ]; then
  exec pui-entrypoint python -m bytewax.run "$target"
fi
pui-entrypoint python -m bytewax.run "$target"
status=$?
echo "entrypoint.sh: the dataflow ended with status $status; keeping the container alive" >&2
while :; do sleep 3600; done
