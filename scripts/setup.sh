#!/usr/bin/env bash
# Set up a virtual environment with depth_node, PyTorch, transformers and rclpy from the PyPI
# ROS 2 wheels: Jazzy in .venv (default), or Kilted in .venv-kilted with DEPTH_NODE_ROS=kilted.
# Idempotent: a second run only checks. Use on a machine WITHOUT a ROS 2 install; in a ROS 2
# workspace use colcon instead (README).
set -euo pipefail
cd "$(dirname "$0")/.."
ROS=${DEPTH_NODE_ROS:-jazzy}
case "$ROS" in
  jazzy) EXTRA=ros-wheels; DEFAULT_VENV=.venv ;;
  kilted) EXTRA=ros-wheels-kilted; DEFAULT_VENV=.venv-kilted ;;
  *) echo "[setup] DEPTH_NODE_ROS=$ROS: use jazzy or kilted" >&2; exit 2 ;;
esac
VENV=${DEPTH_NODE_VENV:-$DEFAULT_VENV}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
touch "$VENV/COLCON_IGNORE"  # the ROS wheels ship package.xml files: keep colcon out
. "$VENV/bin/activate"
# Jazzy (.venv, the full suite) also gets the CPU inference engines (onnx, onnxruntime,
# openvino); the Kilted venv runs the ROS-level tests with the torch engine only.
CHECK='import torch, transformers, rclpy, sensor_msgs, diagnostic_msgs, rosbags, tqdm, depth_node'
CHECK="$CHECK, flake8"  # the lint gate, test/test_flake8.py
ENGINES=''
if [ "$ROS" = jazzy ]; then
  CHECK="$CHECK, onnx, onnxruntime, openvino, depth_node.export_tool"
  ENGINES=',engines'
fi
# Run from / so that depth_node comes from the venv's install, and must be this checkout's: a
# venv installed (editable) from another or a deleted clone is reinstalled from here.
HERE="$(pwd -P)"
CHECK="$CHECK; import pathlib, sys; sys.exit(pathlib.Path(depth_node.__file__).resolve().parents[1] != pathlib.Path('$HERE'))"
if ! (cd / && python -c "$CHECK") 2>/dev/null || [ ! -x "$VENV/bin/depth_node-export" ] || \
   [ ! -x "$VENV/bin/depth_node-bag" ]; then
  echo "[setup] installing into $VENV, ROS 2 $ROS wheels (torch first: 2.13.0 is the CPU" \
       'wheel here)'
  python -m pip install -q --disable-pip-version-check 'torch==2.13.0'
  if [ "$ROS" = jazzy ]; then
    python -m pip install -q --disable-pip-version-check -c scripts/constraints.txt \
      -e ".[$EXTRA,test$ENGINES]"
  else  # the non-ROS pins of constraints.txt, the Kilted ROS pins
    grep -v '^ros-' scripts/constraints.txt > "$VENV/constraints-common.txt"
    python -m pip install -q --disable-pip-version-check -c "$VENV/constraints-common.txt" \
      -c scripts/constraints-kilted.txt -e ".[$EXTRA,test$ENGINES]"
  fi
fi
if [ "$ROS" = jazzy ]; then  # depth_node-serve and model.engine triton (issue 26)
  # The client (tritonclient) goes into $VENV without its pins (it asks for protobuf<7 and
  # ml-dtypes<=0.5.4; its gRPC and HTTP clients work with this venv's newer ones: test_triton.py).
  python -c 'import tritonclient.grpc, tritonclient.http' 2>/dev/null || \
    python -m pip install -q --disable-pip-version-check --no-deps 'tritonclient==2.73.0' \
      'grpcio==1.85.4' 'python-rapidjson==1.25' 'geventhttpclient==2.6.1' 'gevent==26.9.0' \
      'greenlet==3.3.2' 'zope.event==6.2' 'zope.interface==8.7' 'brotli==1.2.1'
  # The server needs numpy<2 (PyTriton's Python backend stub reads numpy 1.x arrays) and this
  # venv pins numpy 2: it runs from its own venv, PyTriton and numpy 1.26 there, everything
  # else (torch, transformers, depth_node) seen from $VENV through a .pth file.
  SERVER_VENV=${DEPTH_NODE_TRITON_VENV:-$VENV-triton}
  if ! "$SERVER_VENV/bin/python" -c 'import numpy, pytriton, torch, depth_node.serve
assert numpy.__version__.startswith("1.")' 2>/dev/null; then
    echo "[setup] PyTriton server venv $SERVER_VENV"
    "$(python -c 'import sys; print(sys._base_executable)')" -m venv "$SERVER_VENV"
    touch "$SERVER_VENV/COLCON_IGNORE"
    "$SERVER_VENV/bin/python" -m pip install -q --disable-pip-version-check \
      'nvidia-pytriton==0.7.0' 'numpy==1.26.4' 'tritonclient[grpc,http]==2.73.0' \
      'protobuf==6.33.6' 'grpcio==1.85.4'
    purelib='import sysconfig; print(sysconfig.get_paths()["purelib"])'
    echo "import site; site.addsitedir('$(python -c "$purelib")')" \
      > "$("$SERVER_VENV/bin/python" -c "$purelib")/zz_depth_node_venv.pth"
  fi
fi
python -c 'import diffusers' 2>/dev/null || python -m pip install -q --disable-pip-version-check \
  -c scripts/constraints.txt -e '.[marigold]'  # Marigold tests (test/test_marigold.py)
python -c 'import torch, transformers, rclpy; print("[setup] ok: torch", torch.__version__,
"transformers", transformers.__version__, "rclpy from", rclpy.__file__.split("/site-packages")[0])'
