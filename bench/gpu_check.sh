#!/usr/bin/env bash
# The prepared GPU check: the gpu tests, the engines' checks (issue 24), then the GPU benchmarks,
# in under 10 minutes on one GPU (the later benchmarks are skipped when time runs short).
#
#   bash bench/gpu_check.sh            # writes to $OUT, or bench/results/gpu_check/
#
# Needs no network, no ROS and no shared data: it runs with the first Python that has a CUDA
# torch ($PYTHON, ./.venv/bin/python, python3) and skips what that Python cannot run
# (onnxruntime-gpu, tensorrt, rclpy), saying so. Where bench/gpu_carry.sh left rclpy wheels in
# .whl/ and two real frames in .gpudata/ (carried to the device), it installs the wheels into
# that Python and also runs the node over DDS on the GPU (bench_pipeline.py --device cuda
# --quick). Every step has a hard timeout; the script always exits 0 and ends with a summary
# of what ran, passed, failed and was skipped (summary.txt).
set -u
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-bench/results/gpu_check}"
mkdir -p "$OUT_DIR"
SUMMARY="$OUT_DIR/summary.txt"
: > "$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export DEPTH_NODE_CACHE="${DEPTH_NODE_CACHE:-$(mktemp -d)}"

PY=''
for candidate in "${PYTHON:-}" ./.venv/bin/python python3; do
  [ -n "$candidate" ] || continue
  command -v "$candidate" >/dev/null 2>&1 || [ -x "$candidate" ] || continue
  if timeout 120 "$candidate" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
      >/dev/null 2>&1; then
    PY="$candidate"
    break
  fi
done

note "== gpu_check $(date -u +%FT%TZ)"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi -L 2>&1 | tee -a "$SUMMARY"
else
  note 'nvidia-smi: not found'
fi
if [ -z "$PY" ]; then
  for candidate in "${PYTHON:-}" ./.venv/bin/python python3; do
    [ -n "$candidate" ] || continue
    command -v "$candidate" >/dev/null 2>&1 || [ -x "$candidate" ] || continue
    timeout 60 "$candidate" -c 'import torch; print("torch", torch.__version__, "CUDA build",
torch.version.cuda, "available", torch.cuda.is_available())' 2>&1 | sed "s|^|$candidate: |" \
      | tee -a "$SUMMARY"
  done
  note 'NOT RUN: no Python here has a CUDA-enabled torch that sees a GPU (a CPU torch wheel,'
  note 'or no driver). Nothing GPU-specific could be checked.'
  exit 0
fi
if [ -d .whl ] && ! "$PY" -c 'import rclpy' >/dev/null 2>&1; then
  timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile .whl/*.whl 2>&1 \
    | grep -v WARNING | tail -n 3 | tee -a "$SUMMARY"
fi
[ -d .gpudata ] && export DEPTH_NODE_REAL_DATA="$PWD/.gpudata"
timeout 120 "$PY" - <<'EOF' 2>&1 | tee -a "$SUMMARY"
import importlib.util
import torch
print(f'python: torch {torch.__version__} (CUDA {torch.version.cuda}), '
      f'{torch.cuda.device_count()} GPU(s): {torch.cuda.get_device_name(0)}')
for name in ('transformers', 'onnxruntime', 'tensorrt', 'openvino', 'rclpy'):
    spec = importlib.util.find_spec(name)
    if spec is None:
        print(f'{name}: not installed (its checks are skipped)')
        continue
    module = __import__(name)
    extra = ''
    if name == 'onnxruntime':
        extra = f' providers {module.get_available_providers()}'
    print(f'{name}: {getattr(module, "__version__", "?")}{extra}')
EOF

step() {  # step NAME SECONDS COMMAND...: run with a hard timeout, log to $OUT_DIR/NAME.log
  local name="$1" seconds="$2"
  shift 2
  local start=$SECONDS
  timeout --kill-after=10 "$seconds" "$@" > "$OUT_DIR/$name.log" 2>&1
  local rc=$?
  local verdict='ok'
  [ $rc -eq 0 ] || verdict="FAILED (exit $rc)"
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && verdict="TIMED OUT after ${seconds} s"
  note "-- $name: $verdict in $((SECONDS - start)) s (log: $name.log)"
  tail -n 25 "$OUT_DIR/$name.log" | sed 's/^/   /' | tee -a "$SUMMARY" >/dev/null
}

# 1. the gpu tests (parity, CUDA graphs, threads, capture failure, precision per family; issue
# 25: the per-frame work kept on the GPU against the CPU path, kernel by kernel and end to end)
step pytest_gpu 300 "$PY" -m pytest -m gpu -q -rs -p no:cacheprovider test/test_gpu.py \
  test/test_device_kernels.py test/test_quality_device.py test/test_device_finish.py \
  test/test_cloud.py test/test_packing.py -k 'not test_engine_' \
  --junitxml="$OUT_DIR/pytest_gpu.xml"
grep -E '^(PASSED|FAILED|SKIPPED|ERROR)|passed|failed|skipped' "$OUT_DIR/pytest_gpu.log" \
  | tail -n 20 >> "$SUMMARY"

# 1b. the engines (issue 24): the startup self-check per GPU engine and precision (its errors,
# printed with -s, are the GPU figures of the README's tolerance table), TensorRT with dynamic
# shapes, I/O dtypes, its own stream, plans keyed under the cache, cuda:1, ONNX Runtime's
# TensorRT provider cache and CUDA provider. TensorRT and onnxruntime-gpu are not installed
# from here (no network on the device): carry their wheels in .whl/ (bench/gpu_carry.sh).
step pytest_gpu_engines 200 "$PY" -m pytest -m gpu -q -s -rs -p no:cacheprovider \
  test/test_gpu.py -k test_engine_ --junitxml="$OUT_DIR/pytest_gpu_engines.xml"
grep -E 'self-check|vs onnxruntime|passed|failed|skipped' "$OUT_DIR/pytest_gpu_engines.log" \
  | cut -c1-300 | tail -n 30 >> "$SUMMARY"

# 1c. the self-check on V2-Small (random weights) at 640x480 as depth_node-export runs it, per
# GPU engine in fp16 (TensorRT builds V2-Small in about a minute or two)
for engine in onnxruntime tensorrt; do
  if "$PY" -c "import $engine" >/dev/null 2>&1; then
    step "export_selfcheck_$engine" 150 "$PY" -m depth_node.export_tool \
      --random-init depth-anything-v2-small --engines "$engine" --device cuda \
      --precision fp16 --sizes 640x480
    grep -E 'self-check' "$OUT_DIR/export_selfcheck_$engine.log" | cut -c1-300 >> "$SUMMARY"
  else
    note "-- export_selfcheck_$engine: $engine is not installed here"
  fi
done

# 2. the measurements: latency per mode and precision, 3 cameras dropping frames, precision
step bench_gpu 200 "$PY" bench/bench_gpu.py --quick --frames 3000 --out "$OUT_DIR/bench_gpu.json"

# 2b. the per-frame kernels on the GPU against numpy on the host (issue 25), the same code
step bench_kernels 60 "$PY" bench/bench_alignment.py --kernels --no-timing
step bench_quality_cuda 60 "$PY" bench/bench_quality.py --cost-only --torch-device cuda
grep -E 'numpy|torch|ratio' "$OUT_DIR/bench_kernels.log" "$OUT_DIR/bench_quality_cuda.log" \
  | cut -c1-200 | tail -n 20 >> "$SUMMARY"

# 3. torch.compile latency, if time is left (compiling V2-Small takes minutes)
if [ $SECONDS -lt 330 ]; then
  step bench_gpu_compile $((450 - SECONDS)) "$PY" bench/bench_gpu.py --quick --compile \
    --only latency --iterations 100 --out "$OUT_DIR/bench_gpu_compile.json"
else
  note '-- bench_gpu_compile: skipped (no time left under the 8-minute budget)'
fi

# 4. the node as a process over DDS on the GPU, where rclpy and the real frames are here
DATA_DIR="${DEPTH_NODE_REAL_DATA:-../shared/data/real}"
if "$PY" -c 'import rclpy' >/dev/null 2>&1 && [ -d "$DATA_DIR" ] && [ $SECONDS -lt 330 ]; then
  if ! command -v depth_node >/dev/null 2>&1; then  # the console script, not installed here
    SHIM="$(mktemp -d)"
    printf '#!/bin/sh\nexec %s -m depth_node.node "$@"\n' "$(command -v "$PY")" \
      > "$SHIM/depth_node"
    chmod +x "$SHIM/depth_node"
    export PATH="$SHIM:$PATH"
  fi
  step bench_pipeline_cuda $((470 - SECONDS)) "$PY" bench/bench_pipeline.py --device cuda \
    --quick --out "$OUT_DIR/pipeline_cuda.json"
else
  note '-- bench_pipeline.py --device cuda: not run (needs rclpy and the real frames: run'
  note '   bash bench/gpu_carry.sh here and carry .whl and .gpudata; or no time was left)'
fi

# 5. several cameras (issue 25): one forward per batch of cameras, CUDA graphs (auto), the
# frame rate per camera with 1, 2 and 4 cameras in the node (in process, over DDS)
if "$PY" -c 'import rclpy' >/dev/null 2>&1 && [ $SECONDS -lt 480 ]; then
  LEFT=$((570 - SECONDS))
  step bench_batching_cuda $((LEFT > 100 ? 100 : LEFT)) "$PY" bench/bench_batching.py \
    --device cuda --cameras 2 4 --node-cameras 1 2 4 --rounds 20 \
    --out "$OUT_DIR/batching_cuda.json"
  grep -E '^\| (estimator|node)' "$OUT_DIR/bench_batching_cuda.log" >> "$SUMMARY"
else
  note '-- bench_batching.py --device cuda: not run (needs rclpy, or no time was left)'
fi

note "== done in $SECONDS s; results in $OUT_DIR"
if [ -n "${OUT:-}" ]; then  # the device tool returns at most 8 files: pack all but the summary
  (cd "$OUT_DIR" && tar -czf gpu_check.tar.gz --exclude summary.txt --exclude gpu_check.tar.gz \
    -- * && find . -maxdepth 1 -type f ! -name summary.txt ! -name gpu_check.tar.gz -delete)
fi
exit 0
