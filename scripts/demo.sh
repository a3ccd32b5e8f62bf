#!/usr/bin/env bash
# The demo: three backends, the balancer in front, a chat page. Ctrl-C stops it.
# Installs only what the demo needs (the package itself, no test tools) into .venv;
# scripts/setup.sh (run by scripts/test.sh) adds the test extras to the same .venv later.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import wsbalancer.devtools.demo.run" 2>/dev/null || [ ! -x .venv/bin/wsbalancer-demo ]; then
  # compat mode puts the checkout on sys.path (as scripts/setup.sh does): edits take effect
  .venv/bin/pip install -q --disable-pip-version-check -e . --config-settings editable_mode=compat
fi
exec .venv/bin/wsbalancer-demo "$@"
