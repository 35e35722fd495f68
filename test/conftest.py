"""Shared fixtures: the real-data folder, an isolated ROS 2 environment, a ROS session and
tiny depth models."""

from __future__ import annotations

import os
from pathlib import Path
import tempfile

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get('DEPTH_NODE_REAL_DATA',
                                REPO_ROOT.parent / 'shared' / 'data' / 'real'))

# Isolate every test process from other ROS 2 graphs on the machine: a private domain,
# localhost-only discovery, logs and ROS_HOME under a temp dir. Set before rclpy is imported.
_ROS_TMP = tempfile.mkdtemp(prefix='depth_node_test_ros_')
os.environ.setdefault('ROS_DOMAIN_ID', str(100 + os.getpid() % 100))
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')  # Jazzy and later
if os.environ.get('ROS_DISTRO') == 'humble':
    os.environ.setdefault('ROS_LOCALHOST_ONLY', '1')
# Fast DDS reads its XML profile once per process, at the first participant: set it before any
# test creates one, so in-process and cross-process tests all use the large shared-memory
# segment (without it, multi-megabyte best-effort frames between processes are mostly lost).
_PROFILE = str(REPO_ROOT / 'config' / 'fastdds_shm.xml')
os.environ.setdefault('FASTRTPS_DEFAULT_PROFILES_FILE', _PROFILE)
os.environ.setdefault('FASTDDS_DEFAULT_PROFILES_FILE', _PROFILE)
os.environ.setdefault('ROS_LOG_DIR', os.path.join(_ROS_TMP, 'log'))
os.environ.setdefault('ROS_HOME', os.path.join(_ROS_TMP, 'home'))
# Engine exports and compiled engines go to a per-run cache, never the user's.
os.environ.setdefault('DEPTH_NODE_CACHE', os.path.join(_ROS_TMP, 'cache'))
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')


@pytest.fixture(scope='session')
def real_data() -> Path:
    """Root of ``../shared/data/real``; skips (with the reason) when it is absent."""
    if not REAL_DATA.is_dir():
        pytest.skip(f'real data not found at {REAL_DATA} (set DEPTH_NODE_REAL_DATA)')
    return REAL_DATA


# Real frames of three sizes: TUM 640x480, KITTI 1224x370, nuScenes 1600x900.
FRAMES = {
    'tum': 'tum_rgbd/1341847980.722988',
    'kitti': 'kitti_object/000000',
    'nuscenes': 'nuscenes_mini/CAM_FRONT',
}


@pytest.fixture(scope='module')
def tiny_dir(tmp_path_factory):
    """``tiny_dir(kind) -> Path``: one saved tiny model per kind (``tiny_models.BUILDERS``)
    for the module, built on first use."""
    from tiny_models import BUILDERS

    root = tmp_path_factory.mktemp('tiny_models')
    cache: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in cache:
            cache[kind] = BUILDERS[kind](root)
        return cache[kind]

    return get


@pytest.fixture(scope='module')
def frames(real_data) -> dict:
    """The :data:`FRAMES` images, ``(H, W, 3)`` uint8 RGB, by key."""
    from depth_node.sample_data import load_frame

    return {key: load_frame(real_data / rel).image for key, rel in FRAMES.items()}


@pytest.fixture
def session():
    """A :class:`ros_harness.RosSession` (own context, spinning executor), closed after it."""
    from ros_harness import RosSession

    s = RosSession()
    yield s
    s.close()


@pytest.fixture(scope='module')
def models(tmp_path_factory) -> dict[str, str]:
    """Directories of a tiny randomly initialised relative and metric Depth Anything."""
    from tiny_models import make_tiny_depth_anything

    root = tmp_path_factory.mktemp('models')
    return {'relative': str(make_tiny_depth_anything(root, metric=False)),
            'metric': str(make_tiny_depth_anything(root, metric=True))}


@pytest.fixture(scope='module')
def kitti(real_data):
    """The first KITTI object frame (1224x370, with LiDAR)."""
    from depth_node.sample_data import load_frame

    return load_frame(real_data / 'kitti_object' / '000000')
