#!/usr/bin/env bash
# Build depth_node with colcon in a temporary workspace, as a ROS 2 user would, and check the
# install tree: share files (launch, config, rviz, sample frames, package.xml), the executables
# where `ros2 run` looks (lib/depth_node), the ament index marker; then run the installed
# executables from a sourced workspace.
#
# Usage: bash scripts/check_colcon.sh [VENV]   VENV: a virtual environment with rclpy, torch and
# transformers (default .venv-kilted, from DEPTH_NODE_ROS=kilted bash scripts/setup.sh);
# colcon-common-extensions is installed into it when missing. CI (.ci/run) calls this.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
VENV=${1:-.venv-kilted}
. "$VENV/bin/activate"
if ! command -v colcon >/dev/null; then
  echo "[colcon] installing colcon-common-extensions into $VENV"
  python -m pip install -q --disable-pip-version-check 'colcon-common-extensions==0.3.0'
fi
WS=$(mktemp -d "${TMPDIR:-/tmp}/depth_node_ws.XXXXXX")
trap 'rm -rf "$WS"' EXIT
mkdir -p "$WS/src/depth_node"
# the package as a clone would have it: tracked and new files, nothing ignored (no venvs)
git ls-files -z --cached --others --exclude-standard \
  | (cd "$REPO" && xargs -0 cp --parents -t "$WS/src/depth_node")
cd "$WS"
if ! colcon build --event-handlers console_cohesion- > colcon.log 2>&1; then
  cat colcon.log
  echo '[colcon] FAILED: colcon build' >&2
  exit 1
fi
echo "[colcon] built in $WS: $(grep -E '^Summary' colcon.log)"

fail=0
check() {  # check DESCRIPTION TEST...
  local what=$1; shift
  if "$@"; then echo "[colcon] ok: $what"; else echo "[colcon] MISSING: $what" >&2; fail=1; fi
}
PREFIX=$WS/install/depth_node
SHARE=$PREFIX/share/depth_node
for f in package.xml launch/depth.launch.py config/depth.yaml config/fastdds_shm.xml \
         rviz/depth.rviz sample_data/README.md; do
  check "share/depth_node/$f" test -f "$SHARE/$f"
done
for f in $(cd "$REPO" && git ls-files --cached --others --exclude-standard 'sample_data/*/*'); do
  check "share/depth_node/$f" cmp -s "$REPO/$f" "$SHARE/$f"
done
for exe in depth_node depth_node_lifecycle depth_node-demo depth_node-eval depth_node-bag; do
  check "lib/depth_node/$exe (ros2 run depth_node $exe)" test -x "$PREFIX/lib/depth_node/$exe"
done
check 'ament index marker share/ament_index/resource_index/packages/depth_node' \
  test -f "$PREFIX/share/ament_index/resource_index/packages/depth_node"

# the sourced workspace: the installed package is the one imported, finds its share directory
# and sample frames through the ament index, and its executables start
set +u
. "$WS/install/setup.bash"
set -u
cd "$WS"
check 'installed executables answer --help' \
  bash -c "'$PREFIX/lib/depth_node/depth_node' --help > help.txt \
           && '$PREFIX/lib/depth_node/depth_node_lifecycle' --help > /dev/null \
           && '$PREFIX/lib/depth_node/depth_node-demo' --help > /dev/null \
           && grep -q '$SHARE/config/depth.yaml' help.txt"
check 'the installed package finds its share directory and sample frames' python -c "
import depth_node, sys
from ament_index_python.packages import get_package_share_directory
from depth_node.share import sample_data_directory, share_directory
prefix = '$PREFIX'
assert depth_node.__file__.startswith(prefix), depth_node.__file__
assert get_package_share_directory('depth_node') == '$SHARE'
assert str(share_directory()) == '$SHARE', share_directory()
assert str(sample_data_directory()) == '$SHARE/sample_data', sample_data_directory()
"
if [ "$fail" != 0 ]; then
  echo '[colcon] FAILED: the install tree is incomplete (see MISSING above)' >&2
  exit 1
fi
echo '[colcon] install tree complete'
