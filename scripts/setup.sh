#!/usr/bin/env bash
# Create .venv (once) and install wsbalancer with its test tools into it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import wsbalancer, pytest, kosoku" 2>/dev/null; then
  .venv/bin/pip install -q --upgrade pip
  # compat mode puts the checkout on sys.path, so twistd finds twisted/plugins/ in it
  .venv/bin/pip install -q -e '.[test]' --config-settings editable_mode=compat
fi
