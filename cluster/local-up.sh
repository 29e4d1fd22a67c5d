#!/usr/bin/env bash
# A local multi-node Ray cluster on loopback for development: one head plus N worker nodes.
#   cluster/local-up.sh [N_WORKERS=1] [CPUS_PER_NODE=1]
# Token authentication stays on: the token lives in $RAY_AUTH_TOKEN_PATH (default ~/.ray/auth_token).
# Export the AWS_* variables for your S3/MinIO before running: every node's workers inherit them.
set -euo pipefail
n_workers=${1:-1}
cpus=${2:-1}
gcs_port=${RAY_GCS_PORT:-6379}
dash_port=${RAY_DASHBOARD_PORT:-8265}
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH=${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}
if [ ! -s "$RAY_AUTH_TOKEN_PATH" ]; then
  mkdir -p "$(dirname "$RAY_AUTH_TOKEN_PATH")"
  python3 -c 'import secrets; print(secrets.token_hex(32), end="")' > "$RAY_AUTH_TOKEN_PATH"
  chmod 600 "$RAY_AUTH_TOKEN_PATH"
fi
# The head schedules no work: workers do it, as on KubeRay.
ray start --head --node-ip-address=127.0.0.1 --port="$gcs_port" --num-cpus=0 \
  --dashboard-host=127.0.0.1 --dashboard-port="$dash_port" --disable-usage-stats
for i in $(seq 1 "$n_workers"); do
  ray start --address="127.0.0.1:$gcs_port" --node-ip-address=127.0.0.1 --num-cpus="$cpus" \
    --disable-usage-stats
done
cat <<MSG

Ray cluster up: head + $n_workers worker node(s) on 127.0.0.1.
  dashboard / jobs:  http://127.0.0.1:$dash_port
  submit:  RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH \\
           ray job submit --address http://127.0.0.1:$dash_port --working-dir . -- \\
           python jobs/icecube_predict.py DATA --split test --out OUT
  in-process: RAY_AUTH_MODE=token RAY_ADDRESS=127.0.0.1:$gcs_port neutrino-ray icecube predict DATA --out OUT
  stop:    cluster/local-down.sh
MSG
