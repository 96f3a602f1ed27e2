#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv and install eacnet_ros
# into it, editable, with the test and ONNX extras. torch==2.13.0 goes first: it is the
# CPU build here, and any looser spec could pull a multi-GB CUDA build instead.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${EACNET_VENV:-.venv}
PYTHON=${PYTHON:-python3}

"$PYTHON" - <<'PY' || { echo "eacnet setup: Python 3.10-3.12 is required (found $("$PYTHON" --version 2>&1))" >&2; exit 1; }
import sys
sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 12) else 1)
PY
if [ ! -x "$VENV/bin/python" ]; then
  echo "eacnet setup: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "eacnet setup: installing torch==2.13.0"
  "${PIP[@]}" install "torch==2.13.0"
fi
echo "eacnet setup: installing eacnet_ros and its dependencies"
"${PIP[@]}" install -e ".[test]"

# launch and launch_ros have no wheels; with the ROS wheels (the test extra) in place, install
# them from their sources beside the repository (see its README.md) so the real launch tests
# (test/test_launch_real.py) run. Only when missing, and quiet unless it fails.
LAUNCH_SRC=${EACNET_ROS_LAUNCH_SRC:-../shared/ros-launch}
VENV_PYTHON="$(cd "$VENV" && pwd)/bin/python"
if [ -f "$LAUNCH_SRC/install.sh" ] && "$VENV_PYTHON" -c "import rclpy" 2>/dev/null \
    && ! "$VENV_PYTHON" -c "import launch_ros" 2>/dev/null; then
  echo "eacnet setup: installing launch and launch_ros from $LAUNCH_SRC"
  log=$(mktemp)
  if ! bash "$LAUNCH_SRC/install.sh" "$VENV_PYTHON" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "eacnet setup: installing launch and launch_ros failed" >&2
    exit 1
  fi
  rm -f "$log"
fi

# The real `ros2` command line (no wheels either) and colcon (from the package index), so
# test/test_ros2_workflow.py builds the package with colcon and drives it with `ros2 launch`,
# `ros2 param`, `ros2 lifecycle`, `ros2 topic`, as docs/ROS.md tells users to. colcon and
# ament_package come with the test extra; ros2cli from its sources, only when missing.
ROS2CLI_SRC=${EACNET_ROS2CLI_SRC:-../shared/ros2cli}
if [ -f "$ROS2CLI_SRC/install.sh" ] && "$VENV_PYTHON" -c "import rclpy" 2>/dev/null \
    && ! "$VENV_PYTHON" -c "import ros2cli, ros2launch" 2>/dev/null; then
  echo "eacnet setup: installing the ros2 command line from $ROS2CLI_SRC"
  log=$(mktemp)
  if ! bash "$ROS2CLI_SRC/install.sh" "$VENV_PYTHON" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "eacnet setup: installing the ros2 command line failed" >&2
    exit 1
  fi
  rm -f "$log"
fi
