#!/usr/bin/env bash
# Every test: lint, types, then the whole pytest suite (unit, integration, Autobahn cases).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check wsbalancer tests twisted bench
.venv/bin/ruff format --check wsbalancer tests twisted bench
.venv/bin/mypy
.venv/bin/coverage run -m pytest "$@"
echo "coverage of wsbalancer/ by the suite: $(.venv/bin/coverage report --format=total)%"
