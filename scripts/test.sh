#!/usr/bin/env bash
# Every test: lint, types, then the whole pytest suite (unit, integration, Autobahn cases).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check wsbalancer tests twisted bench
.venv/bin/ruff format --check wsbalancer tests twisted bench
.venv/bin/mypy
.venv/bin/coverage run -m pytest "$@"
# The suite runs on the asyncio reactor (websockets clients share its loop); the balancer
# runs on epoll with patches.install()'s main loop. So the data-path integration tests run a
# second time on that reactor (pytest-twisted's default on Linux), under that loop, their
# websockets clients on a thread of their own (tests/threaded_aio.py, tests/conftest.py).
# The same options apply; when tests are named, the first pass was all that was asked for.
epoll_tests=(
  tests/test_epoll_run.py tests/test_relay.py tests/test_splice.py tests/test_failover.py
  tests/test_compression.py tests/test_session_end.py tests/test_hostile.py tests/test_tls.py
)
for arg in "$@"; do
  if [[ -e "${arg%%::*}" ]]; then
    epoll_tests=()
    break
  fi
done
if ((${#epoll_tests[@]})); then
  echo "the data-path tests again, on the epoll reactor with the lean main loop:"
  status=0
  .venv/bin/coverage run --append -m pytest --reactor=default "$@" "${epoll_tests[@]}" ||
    status=$?
  if ((status != 0 && status != 5)); then # 5: the options left none of them to run
    exit "$status"
  fi
fi
echo "coverage of wsbalancer/ by the suite: $(.venv/bin/coverage report --format=total)%"
