#!/usr/bin/env bash
# Stop the local Ray cluster started by cluster/local-up.sh (every Ray process of this user).
set -euo pipefail
ray stop --force
