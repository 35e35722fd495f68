#!/usr/bin/env bash
# Prepares, on this machine, what a bare GPU machine lacks for the ROS benchmarks of
# bench/gpu_check.sh: rclpy and the message packages as wheels for the GPU machine's Python
# (.whl/), and the two real frames bench_pipeline.py reads (.gpudata/). Both folders are
# git-ignored here (.git/info/exclude); name them in the device run's carry:
#
#   bash bench/gpu_carry.sh            # then, on the device: bash bench/gpu_check.sh
#                                      # with carry [".whl", ".gpudata"]
#
# The wheels are the ros-* packages of ./.venv, downloaded again for CPython $PY_VERSION
# (default 3.12, what the device's image runs) on x86-64 Linux, without their dependencies
# (numpy, PyYAML: already there). About 45 MB: the device takes 64 MB in all.
set -eu
cd "$(dirname "$0")/.."
PY_VERSION="${PY_VERSION:-3.12}"
DATA="${DEPTH_NODE_REAL_DATA:-../shared/data/real}"
for d in .whl .gpudata; do
  grep -qx "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >> .git/info/exclude
done
rm -rf .whl .gpudata
mkdir -p .whl .gpudata/tum_rgbd .gpudata/nuscenes_mini .gpudata/kitti_object
./.venv/bin/python -m pip list --format=freeze 2>/dev/null | grep -i '^ros-' > .whl/requirements.txt
platforms=()
for n in 17 27 28 31 34 35 39; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
./.venv/bin/python -m pip download -q --no-deps --only-binary=:all: \
  --python-version "$PY_VERSION" --implementation cp "${platforms[@]}" \
  --platform manylinux2014_x86_64 --platform any -d .whl -r .whl/requirements.txt
cp -r "$DATA/tum_rgbd/1341847980.722988" .gpudata/tum_rgbd/
cp -r "$DATA/nuscenes_mini/CAM_FRONT" .gpudata/nuscenes_mini/
cp -r "$DATA/kitti_object/000000" .gpudata/kitti_object/   # the device kernels' LiDAR frame
chmod -R u+w .gpudata
echo "wheels: $(ls .whl/*.whl | wc -l) ($(du -sh .whl | cut -f1)); frames: $(du -sh .gpudata | cut -f1)"
