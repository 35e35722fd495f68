"""The node as a separate process through its console entry point, as `ros2 run` starts it."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from depth_node.messages import image_msg, image_to_array, make_header
from depth_node.sample_data import load_frame
from ros_harness import RosSession, output_or_kill, status_values
from tiny_models import make_tiny_depth_anything

pytestmark = [pytest.mark.ros, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / 'config' / 'fastdds_shm.xml'


def _entry_point() -> list[str]:
    exe = shutil.which('depth_node', path=str(Path(sys.executable).parent))
    if exe:
        return [exe]
    return [sys.executable, '-m', 'depth_node.node']


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env['FASTRTPS_DEFAULT_PROFILES_FILE'] = str(PROFILE)
    env['FASTDDS_DEFAULT_PROFILES_FILE'] = str(PROFILE)
    env['PYTHONUNBUFFERED'] = '1'
    return env


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(_entry_point() + ['--ros-args'] + args, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL)


def wait_ready(proc: subprocess.Popen, timeout: float) -> tuple[bool, str]:
    """Read the node's output until its ``ready:`` line (or its end, or ``timeout`` s); whether
    it said ready, and what it printed so far."""
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if 'ready:' in line or not line:
            break
    return any('ready:' in line for line in lines), ''.join(lines)


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
    return make_tiny_depth_anything(tmp_path_factory.mktemp('proc_model'), metric=False)


def test_entry_point_serves_frames_over_dds_and_stops_on_sigint(model_dir, real_data,
                                                                monkeypatch):
    monkeypatch.setenv('FASTRTPS_DEFAULT_PROFILES_FILE', str(PROFILE))
    frame = load_frame(sorted((real_data / 'tum_rgbd').iterdir())[0])
    proc = _start(['-p', f'model.name:={model_dir}', '-p', 'model.device:=cpu',
                   '-r', '__ns:=/proc_test'])
    session = RosSession()
    try:
        probe = session.probe(namespace='/proc_test')
        assert probe.wait_subscribers('image', timeout=60.0), \
            'the node process never subscribed image'
        served = []
        for i in range(3):
            header = make_header('cam_optical', 5, i)
            probe.publish('image', image_msg(frame.image, 'rgb8', header))
            msg = probe.wait_stamp('depth/relative', (5, i), timeout=30.0)
            assert msg is not None, f'frame {i} not served by the node process'
            served.append(msg)
        assert all(m.header.frame_id == 'cam_optical' for m in served)
        assert image_to_array(served[-1]).shape == (480, 640)
        assert np.isfinite(image_to_array(served[-1])).all()
        # the forward passes run on the process's main thread, the executor beside it
        diag = probe.wait_for('/diagnostics', lambda m: 'inference_thread' in
                              status_values(m.status[0]), timeout=30.0)
        assert diag is not None, 'no /diagnostics naming the inference thread'
        assert status_values(diag.status[0])['inference_thread'] == 'MainThread'
    finally:
        session.close()
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, killed = output_or_kill(proc)
        if killed:
            pytest.fail(f'node did not stop on SIGINT:\n{out}')
        elapsed = time.monotonic() - t0
    assert proc.returncode == 0, out
    assert elapsed < 2.0, f'shutdown took {elapsed:.2f} s'
    assert 'Traceback' not in out, out


def test_sigterm_stops_the_node_cleanly(model_dir):
    proc = _start(['-p', f'model.name:={model_dir}', '-p', 'model.device:=cpu',
                   '-r', '__ns:=/term_test'])
    ready, out = wait_ready(proc, 60)
    assert ready, out
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert time.monotonic() - t0 < 2.0
    assert proc.returncode in (0, -signal.SIGTERM), out
    assert 'Traceback' not in out, out


@pytest.mark.parametrize('args,fragment', [
    (['-p', 'model.name:=/nonexistent/model/dir'], '/nonexistent/model/dir'),
    (['-p', 'cloud.stride:=0'], 'cloud.stride'),
    (['-p', 'model.precision:=fp8'], 'model.precision'),
    (['-p', 'input.cameras:=[front, front]'], 'input.cameras names must be unique'),
    pytest.param(['-p', 'lidar.enabled:=true'], 'lidar.T_camera_lidar',
                 marks=pytest.mark.skipif(importlib.util.find_spec('tf2_ros') is not None,
                                          reason='with tf2_ros the node uses tf instead')),
])
def test_bad_startup_configuration_exits_2_with_what_to_fix(args, fragment, model_dir):
    base = ['-p', f'model.name:={model_dir}', '-r', '__ns:=/bad_cfg']
    proc = _start(base + args)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2, out
    assert fragment in out
    assert 'configuration error' in out
    assert 'Traceback' not in out, out


_STICKY = """
import sys
from depth_node.estimator import DepthEstimator
from depth_node import node


class FakeAcceleratorError(RuntimeError):
    pass


def lost(self, *args, **kwargs):
    raise FakeAcceleratorError('CUDA error: an illegal memory access was encountered')


DepthEstimator.predict = lost
sys.exit(node.main(args=sys.argv))
"""


def test_sticky_cuda_error_exits_3_for_a_supervisor(model_dir, real_data, monkeypatch):
    """A sticky CUDA error (injected: an error type with the illegal-memory-access message)
    makes the process log it once and exit with code 3 instead of counting failures forever."""
    monkeypatch.setenv('FASTRTPS_DEFAULT_PROFILES_FILE', str(PROFILE))
    frame = load_frame(sorted((real_data / 'tum_rgbd').iterdir())[0])
    proc = subprocess.Popen(
        [sys.executable, '-c', _STICKY, '--ros-args', '-p', f'model.name:={model_dir}',
         '-p', 'model.device:=cpu', '-p', 'model.warmup:=false', '-r', '__ns:=/sticky_test'],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        stdin=subprocess.DEVNULL)
    session = RosSession()
    try:
        probe = session.probe(namespace='/sticky_test')
        assert probe.wait_subscribers('image', timeout=60.0), 'the node never subscribed image'
        deadline = time.monotonic() + 30
        i = 0
        while proc.poll() is None and time.monotonic() < deadline:
            probe.publish('image', image_msg(frame.image, 'rgb8', make_header('cam', 7, i)))
            i += 1
            time.sleep(0.2)
    finally:
        session.close()
        out, killed = output_or_kill(proc)
        if killed:
            pytest.fail(f'the node did not exit after a sticky CUDA error:\n{out}')
    assert proc.returncode == 3, out
    assert out.count('the GPU is unusable in this process') == 1, out
    assert 'FakeAcceleratorError' in out and 'Traceback' not in out, out
