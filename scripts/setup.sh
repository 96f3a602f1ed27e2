#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv and install eacnet_ros
# into it, editable, with the .[test] extra: the test tools and the ROS 2 Kilted wheels
# (EACNET_EXTRA picks another, e.g. test-jazzy). torch==2.13.0 goes first: it is the CPU
# build here, and any looser spec could pull a multi-GB CUDA build instead.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${EACNET_VENV:-.venv}
# Which extra: test (the ROS 2 Kilted wheels) or test-jazzy (the Jazzy ones; scripts/test_jazzy.sh).
EXTRA=${EACNET_EXTRA:-test}
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
"${PIP[@]}" install -e ".[$EXTRA]"

VENV_PYTHON="$(cd "$VENV" && pwd)/bin/python"

# install_from_source WHAT SRC MODULES: where the ROS wheels (the test extra) are in place and
# MODULES do not import yet, run SRC/install.sh for the venv; quiet unless it fails.
install_from_source() {
  local what=$1 src=$2 modules=$3 log
  if [ -f "$src/install.sh" ] && "$VENV_PYTHON" -c "import rclpy" 2>/dev/null \
      && ! "$VENV_PYTHON" -c "import $modules" 2>/dev/null; then
    echo "eacnet setup: installing $what from $src"
    log=$(mktemp)
    if ! bash "$src/install.sh" "$VENV_PYTHON" >"$log" 2>&1; then
      cat "$log" >&2
      rm -f "$log"
      echo "eacnet setup: installing $what failed" >&2
      exit 1
    fi
    rm -f "$log"
  fi
}

# launch and launch_ros have no wheels: from their sources beside the repository (see its
# README.md), so the real launch tests (test/test_launch_real.py) run.
install_from_source "launch and launch_ros" "${EACNET_ROS_LAUNCH_SRC:-../shared/ros-launch}" launch_ros
# The real `ros2` command line (no wheels either), so test/test_ros2_workflow.py builds the
# package with colcon (from the package index, in the test extra with ament_package) and
# drives it with `ros2 launch`, `ros2 param`, `ros2 lifecycle`, `ros2 topic`, as docs/ROS.md
# tells users to.
install_from_source "the ros2 command line" "${EACNET_ROS2CLI_SRC:-../shared/ros2cli}" "ros2cli, ros2launch"
