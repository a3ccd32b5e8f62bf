#!/usr/bin/env bash
# The demo: three backends, the balancer in front, a chat page. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/wsbalancer-demo "$@"
