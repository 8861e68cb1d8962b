#!/usr/bin/env bash
# Thin wrapper: launch/tpu_pod.sh ACTION --name N --tpu v5e-16 --zone Z ... (see tpu_pod.py).
exec python3 "$(dirname "$0")/tpu_pod.py" "$@"
