#!/usr/bin/env bash
# Stop the local cluster that cluster/local-up.sh started on RAY_GCS_PORT (6379), and only that one:
# its processes are the ones working in /tmp/neutrino-ray-$RAY_GCS_PORT (other Ray instances are left alone).
set -euo pipefail
gcs_port=${RAY_GCS_PORT:-6379}
temp_dir=/tmp/neutrino-ray-$gcs_port
with_children() {  # the given pids and all their descendants (Ray workers rename themselves "ray::...")
  local p
  for p in "$@"; do
    echo "$p"
    # shellcheck disable=SC2046
    with_children $(pgrep -P "$p" || true)
  done
}
mapfile -t pids < <(with_children $(pgrep -f -- "$temp_dir/" || true) | sort -u)
if [ ${#pids[@]} -eq 0 ]; then
  echo "no cluster running on port $gcs_port"
  exit 0
fi
kill -TERM "${pids[@]}" 2>/dev/null || true
for _ in $(seq 1 50); do  # up to 10 s for a clean exit
  alive=$(for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && echo "$p"; done || true)
  [ -z "$alive" ] && break
  sleep 0.2
done
[ -n "${alive:-}" ] && kill -KILL $alive 2>/dev/null || true
echo "stopped the cluster on port $gcs_port (${#pids[@]} processes); logs kept in $temp_dir"
