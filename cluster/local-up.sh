#!/usr/bin/env bash
# A local multi-node Ray cluster on loopback for development: one head plus N worker nodes.
#   cluster/local-up.sh [N_WORKERS=1] [CPUS_PER_NODE=1]
# Ports: RAY_GCS_PORT (6379), RAY_DASHBOARD_PORT (8265: the dashboard and job API, bound to 127.0.0.1 only)
# and RAY_CLIENT_PORT (10001); each node's dashboard agent gets its own port from RAY_AGENT_PORT (52365) up. Ray's gRPC servers (GCS, raylets, the Ray client server) listen on every
# interface whatever the node address, and Ray 2.60 has no setting to change that: token authentication
# guards them; on a shared host, firewall those ports.
# Token authentication stays on: the token lives in $RAY_AUTH_TOKEN_PATH (default ~/.ray/auth_token).
# The cluster's files (logs, sockets, spilled objects) go under /tmp/neutrino-ray-$RAY_GCS_PORT, which is
# also how cluster/local-down.sh finds this cluster's processes and no other Ray's.
# Export the AWS_* variables for your S3/MinIO before running: every node's workers inherit them.
set -euo pipefail
n_workers=${1:-1}
cpus=${2:-1}
gcs_port=${RAY_GCS_PORT:-6379}
dash_port=${RAY_DASHBOARD_PORT:-8265}
agent_port=${RAY_AGENT_PORT:-52365}
temp_dir=/tmp/neutrino-ray-$gcs_port
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH=${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}
if [ -d "$temp_dir" ] && pgrep -f -- "$temp_dir/" >/dev/null; then
  echo "a cluster is already running on port $gcs_port (files in $temp_dir); stop it with cluster/local-down.sh" >&2
  exit 1
fi
if [ ! -s "$RAY_AUTH_TOKEN_PATH" ]; then
  mkdir -p "$(dirname "$RAY_AUTH_TOKEN_PATH")"
  (umask 077; python3 -c 'import secrets; print(secrets.token_hex(32), end="")' > "$RAY_AUTH_TOKEN_PATH")
fi
# The head schedules no work: workers do it, as on KubeRay.
ray start --head --node-ip-address=127.0.0.1 --port="$gcs_port" --num-cpus=0 --temp-dir="$temp_dir" \
  --dashboard-agent-listen-port="$agent_port" \
  --dashboard-host=127.0.0.1 --dashboard-port="$dash_port" --ray-client-server-port="${RAY_CLIENT_PORT:-10001}" \
  --disable-usage-stats
for i in $(seq 1 "$n_workers"); do
  ray start --address="127.0.0.1:$gcs_port" --node-ip-address=127.0.0.1 --num-cpus="$cpus" \
    --dashboard-agent-listen-port=$((agent_port + i)) --disable-usage-stats
done
for _ in $(seq 1 120); do  # up to a minute for every node to register
  up=$(ray status --address="127.0.0.1:$gcs_port" 2>/dev/null | grep -c '^ *1 node_' || true)
  [ "$up" -ge $((n_workers + 1)) ] && break
  sleep 0.5
done
cat <<MSG

Ray cluster up: head (no work) + $n_workers worker node(s) of $cpus CPU(s) on 127.0.0.1.
  dashboard / jobs:  http://127.0.0.1:$dash_port   (logs: $temp_dir/session_latest/logs)
  submit:  RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH \\
           ray job submit --address http://127.0.0.1:$dash_port --working-dir . -- \\
           python jobs/icecube_predict.py DATA --split test --out OUT
           (DATA and OUT: s3:// URIs or absolute paths; the job runs in a copy of your checkout)
  in-process: RAY_AUTH_MODE=token RAY_ADDRESS=127.0.0.1:$gcs_port neutrino-ray icecube predict DATA --out OUT
  stop:    RAY_GCS_PORT=$gcs_port cluster/local-down.sh
MSG
