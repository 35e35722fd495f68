"""What every benchmark shares: paths, a private ROS graph, the machine, load, medians, tables.

Imported by the scripts beside it (``from common import ...``: Python puts a script's folder
first on ``sys.path``); nothing here imports rclpy or torch at import time, so a script can set
up its ROS environment before rclpy is loaded.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
import platform
import re
import sys
import tempfile
from typing import Any, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout without installing
PROFILE = REPO / 'config' / 'fastdds_shm.xml'
"""The Fast DDS shared-memory profile the node is meant to run with (64 MB segment)."""
PROFILE_VARS = ('FASTRTPS_DEFAULT_PROFILES_FILE', 'FASTDDS_DEFAULT_PROFILES_FILE')
DATA = Path(os.environ.get('DEPTH_NODE_REAL_DATA', REPO.parent / 'shared' / 'data' / 'real'))
"""The real frames (``../shared/data/real``, or ``$DEPTH_NODE_REAL_DATA``)."""


# ----------------------------------------------------------------------------------------------
# a private ROS graph

def ros_env(domain: int, profile: bool, tmp: Optional[str] = None) -> dict[str, Optional[str]]:
    """The variables that give a run its own ROS 2 graph; ``None`` means "unset".

    ``ROS_DOMAIN_ID`` ``domain``, discovery on this machine only, logs and ROS home in ``tmp``
    (a fresh temporary folder by default), and the Fast DDS profile :data:`PROFILE` when
    ``profile`` is true, else Fast DDS's defaults (the profile variables unset).
    """
    tmp = tmp or tempfile.mkdtemp(prefix='depth_node_bench_')
    env: dict[str, Optional[str]] = {
        'ROS_DOMAIN_ID': str(domain), 'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST',
        'ROS_LOG_DIR': os.path.join(tmp, 'log'), 'ROS_HOME': os.path.join(tmp, 'home')}
    env.update({key: str(PROFILE) if profile else None for key in PROFILE_VARS})
    return env


def isolate_ros(domain: int, profile: bool = True, tmp: Optional[str] = None) -> dict[str, str]:
    """Put this process on its own ROS graph (:func:`ros_env`), offline for the Hugging Face hub;
    call before rclpy is imported. Returns the variables set."""
    env = ros_env(domain, profile, tmp)
    env.update({'HF_HUB_OFFLINE': '1', 'TRANSFORMERS_OFFLINE': '1'})
    _apply(os.environ, env)
    return {key: value for key, value in env.items() if value is not None}


def subprocess_env(domain: int, profile: bool, tmp: Optional[str] = None) -> dict[str, str]:
    """A copy of this process's environment with :func:`ros_env` applied, for a child."""
    env = dict(os.environ)
    _apply(env, ros_env(domain, profile, tmp))
    return env


def _apply(target: Any, env: dict[str, Optional[str]]) -> None:
    for key, value in env.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value


def prepare_run(domain: int, device: str) -> Optional[str]:
    """A private ROS graph with the Fast DDS profile, the real data checked, ``device``
    resolved (``'cuda'`` for the first GPU); None, after saying why, when the data is missing."""
    isolate_ros(domain, profile=True)
    if not DATA.is_dir():
        print(f'real data not found at {DATA} (set DEPTH_NODE_REAL_DATA)', file=sys.stderr)
        return None
    from depth_node.estimator import resolve_device

    resolved = str(resolve_device(device))
    return 'cuda' if resolved == 'cuda:0' else resolved


# ----------------------------------------------------------------------------------------------
# the machine and its load

def machine_info(with_torch: bool = True) -> dict[str, Any]:
    """Platform, Python, CPU model, its AVX-512 / AMX flags, cores and memory (GiB); with
    ``with_torch`` also torch's version, threads, CPU capability, transformers and the GPU."""
    info: dict[str, Any] = {'platform': platform.platform(), 'python': platform.python_version(),
                            'cpus': os.cpu_count()}
    if with_torch:
        import torch

        info.update({'torch': torch.__version__, 'torch_threads': torch.get_num_threads(),
                     'cpu_capability': torch.backends.cpu.get_cpu_capability()})
        try:
            import transformers
            info['transformers'] = transformers.__version__
        except ImportError:  # pragma: no cover
            pass
    try:
        text = Path('/proc/cpuinfo').read_text()
        model = re.search(r'model name\s*:\s*(.*)', text)
        flags = re.search(r'flags\s*:\s*(.*)', text)
        info['cpu'] = model.group(1).strip() if model else platform.processor()
        flag_set = set(flags.group(1).split()) if flags else set()
        info['cpu_flags'] = sorted(f for f in flag_set if f.startswith(('avx512', 'amx')))
        mem = re.search(r'MemTotal:\s*(\d+)', Path('/proc/meminfo').read_text())
        info['memory_gib'] = round(int(mem.group(1)) / 2**20, 1) if mem else None
    except OSError:  # pragma: no cover - not Linux
        info['cpu'] = platform.processor() or platform.machine()
    if with_torch and torch.cuda.is_available():
        info['gpu'] = torch.cuda.get_device_name(0)
    return info


def cpu_line(info: dict[str, Any]) -> str:
    """``CPU: <model>; flags <AVX-512 / AMX flags>`` of a :func:`machine_info` dict."""
    return f"CPU: {info.get('cpu')}; flags {' '.join(info.get('cpu_flags', []))}"


def loadavg() -> Optional[list[float]]:
    """The 1, 5 and 15 minute load averages, rounded to 0.01; None where unknown."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover
        return None


def proc_kib(field: str, pid: Any = 'self') -> Optional[int]:
    """A KiB field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``); None once it has gone."""
    try:
        for line in Path(f'/proc/{pid}/status').read_text().splitlines():
            if line.startswith(field + ':'):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def thread_times(pid: Any = 'self') -> dict[str, tuple[int, int]]:
    """Each thread of ``pid``: (ns on a CPU, ns runnable but waiting for one), from
    ``/proc/<pid>/task/*/schedstat``; empty where the kernel has no schedstat (not Linux)."""
    out = {}
    try:
        tids = os.listdir(f'/proc/{pid}/task')
    except OSError:
        return out
    for tid in tids:
        try:
            run, wait = Path(f'/proc/{pid}/task/{tid}/schedstat').read_text().split()[:2]
        except (OSError, ValueError):
            continue  # the thread ended
        out[tid] = (int(run), int(wait))
    return out


def cpu_split(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]],
              pool: int) -> dict[str, float]:
    """CPU time between two :func:`thread_times` readings of one process, in ms.

    ``inference``: the ``pool`` busiest threads, the forward's intra-op pool; its calling
    thread is among them, so in the node this also holds what that thread does besides the
    forward (decode, pre- and postprocessing, the LiDAR fit, the cloud, publishing).
    ``other``: every other thread (the executor, DDS, OpenVINO's own pool beyond ``pool``).
    ``runqueue_wait``: all threads' time runnable without a CPU (contention for the cores).
    Empty when either reading is (no schedstat, or the process has gone): no data, not 0.
    """
    if not before or not after:
        return {}
    runs, wait = [], 0
    for tid, (run_after, wait_after) in after.items():
        run_before, wait_before = before.get(tid, (0, 0))
        runs.append(max(run_after - run_before, 0))  # a reused thread id: not negative
        wait += max(wait_after - wait_before, 0)
    runs.sort(reverse=True)
    return {'inference': round(sum(runs[:pool]) / 1e6, 1),
            'other': round(sum(runs[pool:]) / 1e6, 1), 'runqueue_wait': round(wait / 1e6, 1)}


# ----------------------------------------------------------------------------------------------
# figures and tables

def median(values: Sequence[float]) -> float:
    """The median, NaN for no values."""
    return float(np.median(values)) if len(values) else math.nan


def fmt(value: Any) -> str:
    """A table cell: floats to 2 decimals (whole numbers from 100), NaN and None as ``-``."""
    if isinstance(value, float):
        if math.isnan(value):
            return '-'
        return f'{value:.2f}' if abs(value) < 100 else f'{value:.0f}'
    return '-' if value is None else str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A markdown table: one row per dict, ``columns`` as (key, title); missing keys as ``-``."""
    header = '| ' + ' | '.join(title for _, title in columns) + ' |'
    rule = '|' + '|'.join('---' for _ in columns) + '|'
    body = ['| ' + ' | '.join(fmt(row.get(key)) for key, _ in columns) + ' |' for row in rows]
    return '\n'.join([header, rule] + body)
