#!/usr/bin/env bash
# Set up a virtual environment with depth_node, PyTorch, transformers and rclpy (PyPI Jazzy
# wheels) in .venv. Idempotent: a second run only checks. Use on a machine WITHOUT a ROS 2
# install; in a ROS 2 workspace use colcon instead (README).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${DEPTH_NODE_VENV:-.venv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
. "$VENV/bin/activate"
if ! python -c 'import torch, transformers, rclpy, sensor_msgs, diagnostic_msgs, depth_node, onnx,
onnxruntime, openvino' 2>/dev/null || [ -z "$(ls "$VENV"/bin/depth_node-export 2>/dev/null)" ]; then
  echo '[setup] installing into' "$VENV" '(torch first: 2.13.0 is the CPU wheel here)'
  python -m pip install -q --disable-pip-version-check 'torch==2.13.0'
  python -m pip install -q --disable-pip-version-check -c scripts/constraints.txt \
    -e '.[ros-wheels,test,engines]'
fi
python -c 'import diffusers' 2>/dev/null || python -m pip install -q --disable-pip-version-check \
  -c scripts/constraints.txt -e '.[marigold]'  # Marigold tests (test/test_marigold.py)
python -c 'import torch, transformers, rclpy; print("[setup] ok: torch", torch.__version__,
"transformers", transformers.__version__)'
