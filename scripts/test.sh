#!/usr/bin/env bash
# Run the test suite (sets up the virtual environment first when needed). Extra arguments go to
# pytest. DEPTH_NODE_ROS=kilted runs against the ROS 2 Kilted wheels (.venv-kilted).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "${DEPTH_NODE_ROS:-jazzy}" = kilted ]; then DEFAULT_VENV=.venv-kilted; else DEFAULT_VENV=.venv; fi
. "${DEPTH_NODE_VENV:-$DEFAULT_VENV}/bin/activate"
exec python -m pytest -q -p no:cacheprovider "$@"
