#!/usr/bin/env bash
# Set up (when needed) and run the node on the sample frames shipped in sample_data/.
# Writes colorized depth PNGs, PLY clouds and per-stage timings to out/.
# Arguments go to depth_node-demo, e.g. --model /path/to/Depth-Anything-V2-Small-hf
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. "${DEPTH_NODE_VENV:-.venv}/bin/activate"
exec depth_node-demo --frames sample_data --out out "$@"
