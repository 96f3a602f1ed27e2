#!/usr/bin/env bash
# Set up .venv if needed, then run the demo: a rosbag2 of CamVid val frames is replayed
# through the segmentation pipeline; prints mIoU and FPS, writes the output bag and an
# HTML report under ./demo_out. Extra arguments go to `eacnet demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${EACNET_VENV:-.venv}
exec "$VENV/bin/eacnet" demo "$@"
