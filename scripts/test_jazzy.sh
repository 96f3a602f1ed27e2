#!/usr/bin/env bash
# The real-ROS tests on ROS 2 Jazzy (the LTS release, Fast DDS 2.x) in a virtual environment
# of its own, .venv-jazzy (EACNET_JAZZY_VENV): the node, process, lifecycle, multi-camera,
# malformed-input, launch, bag-replay, ready-at-start, confidence-alarm, soak and `ros2` command-line
# tests, on a pytest-xdist worker per core as scripts/test.sh. scripts/test.sh runs
# the whole suite on Kilted; .ci/run runs both.
set -euo pipefail
cd "$(dirname "$0")/.."
export EACNET_VENV=${EACNET_JAZZY_VENV:-.venv-jazzy}
EACNET_EXTRA=test-jazzy bash scripts/setup.sh
"$EACNET_VENV/bin/python" - <<'PY'
import os, rclpy  # noqa: E401 - which rclpy this environment runs, in the log
print(f"eacnet test_jazzy: rclpy from {os.path.dirname(rclpy.__file__)}")
PY
exec "$EACNET_VENV/bin/python" -m pytest -q -n "${EACNET_TEST_WORKERS:-auto}" --dist loadfile "$@" \
  test/test_node_real.py test/test_node_real_process.py test/test_lifecycle_real.py \
  test/test_multi_camera_real.py test/test_node_malformed_real.py test/test_launch_real.py \
  test/test_bag_replay_real.py test/test_ros2_workflow.py test/test_node_ready_real.py test/test_node_real_confidence.py \
  test/test_dds_soak.py test/test_python310.py
