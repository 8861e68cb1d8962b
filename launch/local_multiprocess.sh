#!/usr/bin/env bash
# N processes x M fake CPU devices on this machine: a multi-host run without a cluster, the way
# CI checks multi-process code (one global mesh of N*M devices, jax.distributed over localhost).
#
#   launch/local_multiprocess.sh [-n PROCESSES] [-d DEVICES_PER_PROCESS] [-p PORT] -- \
#       vidlang train --config configs/two_tower.py:tiny --workdir runs/mp
#
# Every line is prefixed with its process, `[1/2] ...`. If one process fails the others are
# stopped (they would wait for it at the next collective) and the script exits with its status.
set -euo pipefail

processes=2
devices=4
port=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    -n) processes="$2"; shift 2 ;;
    -d) devices="$2"; shift 2 ;;
    -p) port="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "usage: $0 [-n PROCESSES] [-d DEVICES_PER_PROCESS] [-p PORT] -- COMMAND..." >&2
       exit 2 ;;
  esac
done
if [[ $# -eq 0 ]]; then
  echo "error: no command after --, e.g. -- vidlang train --config ... --workdir ..." >&2
  exit 2
fi
if [[ -z "$port" ]]; then  # a free port for the coordinator (process 0)
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi

set -m  # each process in its own process group, so that stopping it stops its children too
pids=()
stop_all() { for pid in "${pids[@]}"; do kill -- "-$pid" 2>/dev/null || true; done; }
trap stop_all INT TERM

for ((i = 0; i < processes; i++)); do
  (
    set -o pipefail
    JAX_PLATFORMS=cpu \
    XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${devices}" \
    VIDLANG_COORDINATOR_ADDRESS="127.0.0.1:${port}" \
    VIDLANG_NUM_PROCESSES="${processes}" \
    VIDLANG_PROCESS_ID="${i}" \
      "$@" 2>&1 | sed -u "s|^|[${i}/${processes}] |"
  ) &
  pids+=("$!")
done

status=0
for ((done_count = 0; done_count < processes; done_count++)); do
  wait -n || status=$?
  if [[ $status -ne 0 ]]; then
    echo "local_multiprocess: a process failed (exit ${status}); stopping the others." >&2
    stop_all
    wait 2>/dev/null || true
    break
  fi
done
exit "$status"
