"""Tests for the benchmarks' shared code (bench/common.py) and their naive baseline
(bench/naive.py). Neither is part of the installed package; the benchmarks import them."""

from __future__ import annotations

import math
import os
from pathlib import Path
import sys

import numpy as np
import pytest

from depth_node.cloud import depth_to_points

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'bench'))
import common  # noqa: E402
from naive import naive_cloud_points  # noqa: E402

K = np.array([[120.0, 0.0, 30.25], [0.0, 110.0, 21.75], [0.0, 0.0, 1.0]])


def test_naive_baseline_equals_vectorized():
    """The benchmark compares equal work: the same points as the package's cloud."""
    rng = np.random.default_rng(1)
    depth = rng.uniform(0.3, 9.0, (9, 11)).astype(np.float32)
    depth[rng.random(depth.shape) < 0.2] = np.nan
    depth[0, 0] = 0.0
    for stride in (1, 2):
        naive = np.array(naive_cloud_points(depth, K, stride=stride), dtype=np.float64)
        fast = depth_to_points(depth, K, stride=stride).reshape(-1, 3)
        fast = fast[np.isfinite(fast[:, 2])]
        assert naive.shape == fast.shape
        np.testing.assert_allclose(fast, naive, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize('profile', [True, False])
def test_subprocess_env_gives_a_private_graph(monkeypatch, tmp_path, profile):
    for key in common.PROFILE_VARS:
        monkeypatch.setenv(key, '/elsewhere.xml')
    monkeypatch.setenv('ROS_DOMAIN_ID', '3')
    env = common.subprocess_env(77, profile, str(tmp_path))
    assert env['ROS_DOMAIN_ID'] == '77' and env['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'LOCALHOST'
    assert env['ROS_LOG_DIR'] == str(tmp_path / 'log')
    for key in common.PROFILE_VARS:
        assert env.get(key) == (str(common.PROFILE) if profile else None)
        assert Path(env.get(key, common.PROFILE)).is_file()
    assert os.environ['ROS_DOMAIN_ID'] == '3'  # this process untouched


def test_markdown_table_and_median():
    rows = [{'a': 1.234, 'b': 1234.5}, {'a': math.nan, 'b': None}, {'a': 'x'}]
    assert common.markdown_table(rows, [('a', 'A'), ('b', 'B')]).splitlines() == [
        '| A | B |', '|---|---|', '| 1.23 | 1234 |', '| - | - |', '| x | - |']
    assert common.median([3.0, 1.0, 2.0]) == 2.0
    assert math.isnan(common.median([]))
