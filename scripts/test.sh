#!/usr/bin/env bash
# Set up .venv if needed, lint, then run the whole test suite: one worker per CPU core
# (pytest-xdist; EACNET_TEST_WORKERS=0 runs it in this process), each test file on one worker,
# so a file's shared set-up (the colcon build and launches of test_ros2_workflow.py, say) is
# made once. Much of the suite waits on other processes (nodes, launches, training runs), so
# two workers on two cores take well under the serial time.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${EACNET_VENV:-.venv}
"$VENV/bin/ruff" check .
WORKERS=${EACNET_TEST_WORKERS:-auto}
if [ "$WORKERS" = 0 ]; then
  exec "$VENV/bin/python" -m pytest -q "$@"
fi
exec "$VENV/bin/python" -m pytest -q -n "$WORKERS" --dist loadfile "$@"
