"""Cross-process DDS transport of depth-sized messages, with and without the Fast DDS profile.

A publisher process sends ``N`` messages per payload at 30 Hz to a subscriber process; the
subscriber records each message's latency (receive time in its callback minus the send time the
publisher wrote into the header stamp just before ``publish()``; both processes read the same
system clock) and which sequence numbers arrived. So a latency holds everything a message costs
the node's way: the Python message to C conversion and CDR serialization in ``publish()``, the
transport, deserialization and the C to Python conversion, and the executor's wake-up.

Two sweeps:

- loss (default): a 640x480 ``32FC1`` depth image (1.2 MB, ``sensor_msgs/Image``) and a
  1280x720 organized x, y, z cloud (11 MB, ``sensor_msgs/PointCloud2``, 12-byte points,
  stride 1); best effort and reliable (keep last 10 on both sides); with and without the
  profile. Prints received / sent, loss, latency median, p90, max.
- ``--sizes``: the cost per MB. Five payloads from 0.1 to 4.9 MB: an unorganized x, y, z, rgb
  cloud of 6,250 points (16 bytes each, evenly spaced points of the full cloud: it stands in
  for a ``cloud.voxel_size`` 0.05 cloud of a 640x480 indoor frame, which has about as many;
  the cost depends on the bytes, not on which points they are), 640x480 depth
  as ``16UC1`` (0.6 MB) and ``32FC1`` (1.2 MB), a 640x480 organized x, y, z, rgb cloud at
  stride 2 (1.2 MB) and stride 1 (4.9 MB); the node's output QoS (reliable, keep last 1).
  Configurations: two processes with the profile (shared memory); two processes without it
  (Fast DDS defaults: larger samples over UDP); one process with two nodes on one executor
  spinning in a background thread while the main thread publishes (as the node's worker thread
  does), the closest rclpy comes to intra-process communication (rclpy has no
  ``use_intra_process_comms`` and no loaned messages; Fast DDS then delivers within the
  process without a transport, but the message is still converted and serialized); and the
  first and third again with :data:`MALLOC_ENV` (glibc keeps freed multi-MB buffers instead of
  unmapping them after every message). Prints latency p50 and p95 and the ``publish()`` call
  per payload, and least-squares lines ``ms = fixed + slope * MB`` per configuration (over all
  payloads, and over those above Fast DDS's default 0.5 MB segment), beside baselines measured
  in the same run: ``rclpy.serialization``'s serialize plus deserialize of each message (the
  conversions every configuration pays), with and without the malloc settings, and one numpy
  copy of its bytes (one memcpy).

Transport: ``FASTRTPS_DEFAULT_PROFILES_FILE`` (and ``FASTDDS_DEFAULT_PROFILES_FILE``) set to
``config/fastdds_shm.xml`` (64 MB shared-memory segment) or unset (Fast DDS defaults: a 0.5 MB
shared-memory segment, larger samples go over fragmented UDP). Fast DDS reads the profile once
per process, so every run starts fresh processes, each with the same setting, on its own
``ROS_DOMAIN_ID`` with ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``.

Prints the CPU model and flags and the load average, writes JSON; exits 0 whatever the figures.

Usage::

    python bench/bench_transport.py                 # loss: 150 messages per run, ~1.5 min
    python bench/bench_transport.py --quick         # loss: 60 messages per run, ~1 min
    python bench/bench_transport.py --count 300 --payloads depth_640x480
    python bench/bench_transport.py --sizes         # per MB: 60 messages per payload, ~2 min
    python bench/bench_transport.py --sizes --quick # per MB: 30 messages per payload
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
import subprocess
import sys
import tempfile
import time
from typing import Any, NamedTuple, Optional

import numpy as np

from common import cpu_line, loadavg, machine_info, markdown_table, REPO, subprocess_env


class Payload(NamedTuple):
    """One message to send: a depth image or a cloud back-projected from one."""

    kind: str
    """``'Image'`` or ``'PointCloud2'``."""
    description: str
    height: int
    """Rows of the depth image the message comes from, pixels."""
    width: int
    """Columns of that depth image, pixels."""
    encoding: str = '32FC1'
    """Image: ``'32FC1'`` (float metres) or ``'16UC1'`` (millimetres)."""
    stride: int = 1
    """Cloud: every ``stride``-th pixel in both directions."""
    color: bool = False
    """Cloud: x, y, z, rgb (16 bytes per point) instead of x, y, z (12)."""
    points: int = 0
    """Cloud: more than 0 makes it unorganized with that many points (all finite)."""


PAYLOADS = {
    'depth_640x480': Payload('Image', '640x480 32FC1 depth image', 480, 640),
    'cloud_1280x720': Payload('PointCloud2', '1280x720 organized xyz cloud', 720, 1280),
    'voxel_6250': Payload('PointCloud2', '6,250-point unorganized xyz rgb cloud (voxel-sized)',
                          480, 640, color=True, points=6250),
    'depth16_640x480': Payload('Image', '640x480 16UC1 depth image', 480, 640,
                               encoding='16UC1'),
    'cloud_rgb_s2': Payload('PointCloud2', '640x480 organized xyz rgb cloud, stride 2', 480,
                            640, stride=2, color=True),
    'cloud_rgb_s1': Payload('PointCloud2', '640x480 organized xyz rgb cloud, stride 1', 480,
                            640, color=True),
}
LOSS_PAYLOADS = ['depth_640x480', 'cloud_1280x720']
SIZE_PAYLOADS = ['voxel_6250', 'depth16_640x480', 'depth_640x480', 'cloud_rgb_s2',
                 'cloud_rgb_s1']
MALLOC_ENV = {'MALLOC_MMAP_THRESHOLD_': str(64 << 20), 'MALLOC_TRIM_THRESHOLD_': str(128 << 20)}
"""glibc malloc settings that keep freed multi-MB buffers for the next message: blocks up to
64 MiB come from the heap instead of their own ``mmap`` and up to 128 MiB of free heap top is
kept. By default glibc maps such a buffer fresh for each message and unmaps it after (its
dynamic mmap threshold), so every page of it faults in again (mallopt(3))."""
SIZE_CONFIGS = {
    'shm': ('two processes, fastdds_shm.xml', True, False, {}),
    'default': ('two processes, profile unset (default)', False, False, {}),
    'one_process': ('one process, two nodes, one executor', True, True, {}),
    'shm_malloc': ('two processes, fastdds_shm.xml, MALLOC_ENV', True, False, MALLOC_ENV),
    'one_process_malloc': ('one process, two nodes, one executor, MALLOC_ENV', True, True,
                           MALLOC_ENV),
}
"""``--sizes`` configurations: (description, profile on, one process, extra environment)."""
RATE_HZ = 30.0
TOPIC = 'bench_transport'
SHM_DEFAULT_SEGMENT_MB = 0.5
"""Fast DDS's default shared-memory segment; larger samples go over UDP without the profile."""
PAYLOAD_GAP_S = 0.5
"""Pause between one payload's last message and the next payload's first (lets it drain)."""


# ----------------------------------------------------------------------------------------------
# messages

def _message(name: str) -> Any:
    """One message of the payload's size and layout (content: a depth ramp, a grey ramp)."""
    from sensor_msgs.msg import Image, PointCloud2, PointField

    from depth_node.cloud import depth_to_points, pack_cloud, strided_rgb
    from depth_node.packing import depth_to_uint16_mm, fill_cloud, fill_image

    p = PAYLOADS[name]
    depth = np.linspace(0.5, 20.0, p.height * p.width, dtype=np.float32)
    depth = depth.reshape(p.height, p.width)
    if p.kind == 'Image':
        msg = Image()
        fill_image(msg, depth_to_uint16_mm(depth) if p.encoding == '16UC1' else depth,
                   p.encoding)
    else:
        K = np.array([[p.width * 0.8, 0, p.width / 2], [0, p.width * 0.8, p.height / 2],
                      [0, 0, 1]])
        xyz = depth_to_points(depth, K, stride=p.stride)
        rgb = None
        if p.color:
            grey = (np.arange(p.height * p.width) % 256).astype(np.uint8)
            rgb = strided_rgb(np.repeat(grey.reshape(p.height, p.width, 1), 3, axis=2),
                              p.stride)
        if p.points:  # evenly spaced points of the full cloud, as one row
            keep = np.linspace(0, xyz.shape[0] * xyz.shape[1] - 1, p.points).astype(int)
            xyz = xyz.reshape(-1, 1, 3)[keep]
            rgb = None if rgb is None else rgb.reshape(-1, 1, 3)[keep]
        msg = PointCloud2()
        fill_cloud(msg, pack_cloud(xyz, rgb, organized=not p.points), PointField)
    msg.header.frame_id = 'camera'
    return msg


def _message_type(name: str) -> Any:
    from sensor_msgs.msg import Image, PointCloud2

    return Image if PAYLOADS[name].kind == 'Image' else PointCloud2


def _topic(name: str) -> str:
    return f'{TOPIC}_{name}'


def _qos(kind: str) -> Any:
    """``'node'``: the node's output QoS; ``'reliable'`` / ``'best_effort'``: keep last 10."""
    if kind == 'node':
        from depth_node.node import OUTPUT_QOS
        return OUTPUT_QOS
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    policy = ReliabilityPolicy.RELIABLE if kind == 'reliable' else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=policy)


# ----------------------------------------------------------------------------------------------
# roles: sending, receiving (in their own processes, or both in one)

def _send(node: Any, args: argparse.Namespace) -> dict[str, list[float]]:
    """Publish ``args.count`` messages of each payload in turn at ``args.rate`` Hz from this
    thread once every topic has a subscriber; the ``publish()`` call times (ms) per payload."""
    pubs = {name: node.create_publisher(_message_type(name), _topic(name), _qos(args.qos))
            for name in args.payload_list}
    messages = {name: _message(name) for name in args.payload_list}
    deadline = time.monotonic() + 30
    while (any(pub.get_subscription_count() == 0 for pub in pubs.values())
           and time.monotonic() < deadline):
        time.sleep(0.02)
    if any(pub.get_subscription_count() == 0 for pub in pubs.values()):
        raise RuntimeError('no subscriber matched within 30 s')
    time.sleep(1.0)  # let discovery settle both ways (reliable readers)
    publish_ms: dict[str, list[float]] = {}
    period = 1.0 / args.rate
    for i, name in enumerate(args.payload_list):
        if i:
            time.sleep(PAYLOAD_GAP_S)
        pub, msg, times = pubs[name], messages[name], publish_ms.setdefault(name, [])
        start = time.monotonic()
        for seq in range(args.count):
            pause = start + seq * period - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            msg.header.frame_id = str(seq)
            now = time.time_ns()
            msg.header.stamp.sec = now // 1_000_000_000
            msg.header.stamp.nanosec = now % 1_000_000_000
            t = time.perf_counter()
            pub.publish(msg)
            times.append((time.perf_counter() - t) * 1e3)
    return publish_ms


class _Receiver:
    """Subscriptions to every payload's topic on ``node``; each message's latency in ms by
    payload and sequence number (callbacks run on whatever thread spins ``node``)."""

    def __init__(self, node: Any, args: argparse.Namespace) -> None:
        self.latency_ms: dict[str, dict[int, float]] = {n: {} for n in args.payload_list}
        self.last = time.monotonic()
        self.expected = args.count * len(args.payload_list)
        for name in args.payload_list:
            node.create_subscription(_message_type(name), _topic(name),
                                     lambda msg, name=name: self._on_msg(name, msg),
                                     _qos(args.qos))

    def _on_msg(self, name: str, msg: Any) -> None:
        now = time.time_ns()
        sent = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        self.latency_ms[name][int(msg.header.frame_id)] = (now - sent) / 1e6
        self.last = time.monotonic()

    def received(self) -> int:
        return sum(len(v) for v in self.latency_ms.values())

    def wait(self, deadline: float, sender_done: Any, idle: float) -> None:
        """Until everything arrived, ``deadline`` (monotonic s) passed, or ``sender_done()``
        and nothing came for ``idle`` s."""
        while time.monotonic() < deadline and self.received() < self.expected:
            time.sleep(0.05)
            if sender_done() and time.monotonic() - self.last > idle:
                break


def _role(args: argparse.Namespace) -> int:
    """Run as ``pub``, ``sub`` or ``both`` (one process, two nodes, one executor)."""
    from depth_node.spin import BackgroundExecutor

    spin = BackgroundExecutor(name='bench_transport_spin')
    result: dict[str, Any] = {}
    try:
        receiver = None
        if args.role in ('sub', 'both'):
            receiver = _Receiver(spin.add(_node('bench_transport_sub', spin)), args)
            Path(args.result + '.ready').write_text('1')
        if args.role in ('pub', 'both'):
            pub_node = _node('bench_transport_pub', spin)
            if args.role == 'both':
                spin.add(pub_node)  # one executor spins both nodes
            result['publish_ms'] = _send(pub_node, args)
            if args.role == 'pub':
                time.sleep(args.drain)  # reliable: let retransmissions finish before leaving
                pub_node.destroy_node()
        if receiver is not None:
            done = Path(args.result + '.done')  # written once the publisher has exited
            receiver.wait(time.monotonic() + args.timeout,
                          (lambda: True) if args.role == 'both' else done.exists, args.idle)
            result['latency_ms'] = receiver.latency_ms
    finally:
        spin.close()
    Path(args.result).write_text(json.dumps(result))
    return 0


def _node(name: str, spin: Any) -> Any:
    import rclpy

    return rclpy.create_node(name, context=spin.context)


# ----------------------------------------------------------------------------------------------
# orchestration

def _run(args: argparse.Namespace, payloads: list[str], qos: str, profile: bool,
         one_process: bool, domain: int, tmp: str,
         extra_env: Optional[dict[str, str]] = None) -> dict[str, dict[str, Any]]:
    """One run: fresh processes (or one), every payload in turn; a summary per payload."""
    tmp = tempfile.mkdtemp(prefix=f'{domain}_{qos}_', dir=tmp)  # a fresh folder per run
    env = {**subprocess_env(domain, profile, tmp), **(extra_env or {})}
    sub_file = os.path.join(tmp, 'sub.json')
    pub_file = os.path.join(tmp, 'pub.json')
    common = ['--payload-list', *payloads, '--qos', qos, '--count', str(args.count),
              '--rate', str(args.rate)]
    duration = len(payloads) * (args.count / args.rate + PAYLOAD_GAP_S)
    me = [sys.executable, __file__]
    procs = []
    if one_process:
        procs.append(subprocess.Popen([*me, '--role', 'both', *common, '--result', sub_file,
                                       '--timeout', '10', '--idle', '1'], env=env))
        pub_file = sub_file
    else:
        procs.append(subprocess.Popen([*me, '--role', 'sub', *common, '--result', sub_file,
                                       '--timeout', str(duration + 120), '--idle', '1'],
                                      env=env))
        deadline = time.monotonic() + 30
        while not os.path.exists(sub_file + '.ready') and time.monotonic() < deadline:
            time.sleep(0.05)
        procs.insert(0, subprocess.Popen([*me, '--role', 'pub', *common, '--result',
                                          pub_file, '--drain', '3'], env=env))
    try:
        procs[0].wait(timeout=duration + 90)
        Path(sub_file + '.done').write_text('1')
        procs[-1].wait(timeout=90)
    except subprocess.TimeoutExpired:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    latency = _read(sub_file, 'latency_ms')
    publish_ms = _read(pub_file, 'publish_ms')
    out = {}
    for name in payloads:
        record: dict[str, Any] = {'payload': name, 'mbytes': round(args.nbytes[name] / 1e6, 3),
                                  'sent': args.count, 'load_after': loadavg()}
        if latency is None or publish_ms is None:
            codes = ', '.join(str(proc.returncode) for proc in procs)
            record['error'] = f'a process gave no result (exit codes {codes})'
        record.update(_summary(list((latency or {}).get(name, {}).values()),
                               (publish_ms or {}).get(name, []), args.count))
        out[name] = record
    return out


def _read(path: str, key: str) -> Optional[dict[str, Any]]:
    try:
        return json.loads(Path(path).read_text())[key]
    except (OSError, ValueError, KeyError):
        return None


def _summary(latency_ms: list[float], publish_ms: list[float], sent: int) -> dict[str, Any]:
    """Received count, loss, latency median / p90 / p95 / max and the median ``publish()``."""
    values = np.array(latency_ms) if latency_ms else np.array([math.nan])

    def pct(q: float) -> float:
        return round(float(np.percentile(values, q)), 2)

    return {'received': len(latency_ms),
            'loss_pct': round(100.0 * (1 - len(latency_ms) / sent), 1),
            'latency_median_ms': pct(50), 'latency_p90_ms': pct(90), 'latency_p95_ms': pct(95),
            'latency_max_ms': round(float(np.max(values)), 2),
            'publish_call_median_ms': round(float(np.median(publish_ms)), 2) if publish_ms
            else math.nan}


def fit_per_mb(mbytes: list[float], ms: list[float]) -> dict[str, float]:
    """Least-squares line ``ms = fixed_ms + ms_per_mb * mbytes`` over the finite points; NaN
    for fewer than two, with ``r2`` the fraction of the variance it explains."""
    x, y = np.asarray(mbytes, dtype=float), np.asarray(ms, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2 or np.ptp(x[ok]) == 0:
        return {'ms_per_mb': math.nan, 'fixed_ms': math.nan, 'r2': math.nan}
    slope, intercept = np.polyfit(x[ok], y[ok], 1)
    residual = y[ok] - (intercept + slope * x[ok])
    total = float(np.sum((y[ok] - y[ok].mean()) ** 2))
    r2 = 1.0 - float(np.sum(residual ** 2)) / total if total > 0 else math.nan
    return {'ms_per_mb': round(float(slope), 3), 'fixed_ms': round(float(intercept), 2),
            'r2': round(r2, 3)}


def _median_ms(fn: Any, repeats: int = 30) -> tuple[float, float]:
    """Median wall time of ``fn()`` in ms, and the minor page faults per call (mean)."""
    import resource

    times = []
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return float(np.median(times)), faults / repeats


def _baselines(names: list[str]) -> dict[str, dict[str, float]]:
    """In this process, per payload, ms: ``memcpy``, one numpy copy of its bytes; ``serdes``,
    ``rclpy.serialization``'s serialize then deserialize of its message (the Python to C to CDR
    conversion and back that every DDS configuration pays), with glibc's default malloc
    settings, then (``serdes_malloc``) with those of :data:`MALLOC_ENV` set by ``mallopt``
    (NaN without glibc); ``*_faults``: minor page faults per call. Leaves this process with
    the malloc settings."""
    import ctypes

    from rclpy.serialization import deserialize_message, serialize_message

    out: dict[str, dict[str, float]] = {}
    messages = {name: (_message(name), _message_type(name)) for name in names}
    for name, (msg, mtype) in messages.items():
        src = np.frombuffer(msg.data, dtype=np.uint8)
        dst = np.empty_like(src)
        out[name] = {'memcpy': _median_ms(lambda: np.copyto(dst, src))[0]}
        out[name]['serdes'], out[name]['serdes_faults'] = _median_ms(
            lambda: deserialize_message(serialize_message(msg), mtype))
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        mallopt = None
    # mallopt(3): M_TRIM_THRESHOLD -1, M_MMAP_THRESHOLD -3; returns 1 on success
    tuned = mallopt is not None and all(
        mallopt(param, int(MALLOC_ENV[key])) == 1
        for param, key in ((-3, 'MALLOC_MMAP_THRESHOLD_'), (-1, 'MALLOC_TRIM_THRESHOLD_')))
    for name, (msg, mtype) in messages.items():
        out[name]['serdes_malloc'], out[name]['serdes_malloc_faults'] = _median_ms(
            lambda: deserialize_message(serialize_message(msg), mtype)) if tuned \
            else (math.nan, math.nan)
    return out


def _loss_table(rows: list[dict[str, Any]]) -> str:
    cols = [('payload', 'payload'), ('mbytes', 'MB'), ('qos', 'QoS'),
            ('profile', 'Fast DDS profile'), ('received', 'received'), ('sent', 'sent'),
            ('loss_pct', 'loss %'), ('latency_median_ms', 'latency median ms'),
            ('latency_p90_ms', 'p90 ms'), ('latency_max_ms', 'max ms'),
            ('publish_call_median_ms', 'publish() ms')]
    return markdown_table(rows, cols)


def _sizes_tables(result: dict[str, Any]) -> str:
    cols = [('config', 'configuration'), ('payload', 'payload'), ('mbytes', 'MB'),
            ('received', 'received'), ('sent', 'sent'), ('latency_median_ms', 'p50 ms'),
            ('latency_p95_ms', 'p95 ms'), ('publish_call_median_ms', 'publish() ms')]
    fit_cols = [('config', 'configuration'), ('what', 'line through'),
                ('ms_per_mb', 'ms per MB'), ('fixed_ms', 'fixed ms'), ('r2', 'R^2'),
                ('x_copy', 'slope / memcpy slope')]
    return markdown_table(result['runs'], cols) + '\n\n' + markdown_table(result['fits'],
                                                                          fit_cols)


def _parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--sizes', action='store_true',
                    help='the cost per MB (five payloads, three configurations) instead of '
                    'the loss sweep')
    ap.add_argument('--count', type=int, default=None,
                    help='messages per run (loss: default 150, quick 60) or per payload '
                    '(sizes: default 90, quick 30)')
    ap.add_argument('--rate', type=float, default=RATE_HZ, help='messages per second')
    ap.add_argument('--quick', action='store_true')
    ap.add_argument('--payloads', nargs='+', choices=sorted(PAYLOADS), default=None,
                    help=f'loss default {" ".join(LOSS_PAYLOADS)}; sizes default '
                    f'{" ".join(SIZE_PAYLOADS)}')
    ap.add_argument('--reliabilities', nargs='+', choices=['best_effort', 'reliable'],
                    default=['best_effort', 'reliable'], help='loss sweep only')
    ap.add_argument('--configs', nargs='+', choices=list(SIZE_CONFIGS),
                    default=list(SIZE_CONFIGS), help='sizes sweep only')
    ap.add_argument('--domain', type=int, default=1 + os.getpid() % 50,
                    help='first ROS_DOMAIN_ID; each run uses the next one')
    ap.add_argument('--out', default=None,
                    help='JSON file (default bench/results/transport.json, or '
                    'transport_sizes.json with --sizes)')
    # internal: the publisher and subscriber processes
    ap.add_argument('--role', choices=['pub', 'sub', 'both'], help=argparse.SUPPRESS)
    ap.add_argument('--payload-list', nargs='+', choices=sorted(PAYLOADS),
                    help=argparse.SUPPRESS)
    ap.add_argument('--qos', choices=['node', 'reliable', 'best_effort'],
                    help=argparse.SUPPRESS)
    ap.add_argument('--result', help=argparse.SUPPRESS)
    ap.add_argument('--timeout', type=float, default=120.0, help=argparse.SUPPRESS)
    ap.add_argument('--idle', type=float, default=5.0, help=argparse.SUPPRESS)
    ap.add_argument('--drain', type=float, default=3.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.count is None:
        args.count = (30 if args.quick else 60) if args.sizes else (60 if args.quick else 150)
    if args.payloads is None:
        args.payloads = SIZE_PAYLOADS if args.sizes else LOSS_PAYLOADS
    if args.out is None:
        name = 'transport_sizes.json' if args.sizes else 'transport.json'
        args.out = str(REPO / 'bench' / 'results' / name)
    return args


def _loss_sweep(args: argparse.Namespace, tmp: str, result: dict[str, Any]) -> None:
    domain = args.domain
    for payload in args.payloads:
        for reliability in args.reliabilities:
            for profile in (True, False):
                print(f'[{payload} {reliability} profile={"on" if profile else "off"}] '
                      f'{args.count} messages at {args.rate:g} Hz, domain {domain}', flush=True)
                record = _run(args, [payload], reliability, profile, False, domain,
                              tmp)[payload]
                record.update({'qos': reliability,
                               'profile': 'fastdds_shm.xml' if profile else 'unset (default)'})
                domain += 1
                print(f'  received {record["received"]}/{record["sent"]}, latency median '
                      f'{record["latency_median_ms"]} ms {record.get("error", "")}', flush=True)
                result['runs'].append(record)
    print(_loss_table(result['runs']))


def _sizes_sweep(args: argparse.Namespace, tmp: str, result: dict[str, Any]) -> None:
    mbytes = [args.nbytes[name] / 1e6 for name in args.payloads]
    base = _baselines(args.payloads)
    result['baselines'] = {name: {k: round(v, 3) for k, v in b.items()}
                           for name, b in base.items()}
    print(markdown_table([{'payload': n, **base[n]} for n in args.payloads], [
        ('payload', 'payload'), ('memcpy', 'memcpy ms'), ('serdes', 'serialize + deserialize ms'),
        ('serdes_faults', 'page faults'), ('serdes_malloc', 'the same with MALLOC_ENV, ms'),
        ('serdes_malloc_faults', 'page faults')]), flush=True)
    copy_fit = fit_per_mb(mbytes, [base[n]['memcpy'] for n in args.payloads])
    fits = []

    def add(config: str, what: str, x: list[float], ms: list[float]) -> None:
        fit = fit_per_mb(x, ms)
        fit.update({'config': config, 'what': what,
                    'x_copy': round(fit['ms_per_mb'] / copy_fit['ms_per_mb'], 1)})
        fits.append(fit)

    for i, config in enumerate(args.configs):
        description, profile, one_process, extra_env = SIZE_CONFIGS[config]
        domain = args.domain + i
        print(f'[{description}] {len(args.payloads)} payloads x {args.count} messages at '
              f'{args.rate:g} Hz, domain {domain}', flush=True)
        by_name = _run(args, args.payloads, 'node', profile, one_process, domain, tmp,
                       extra_env)
        records = [by_name[name] for name in args.payloads]
        for record in records:
            record['config'] = config
            print(f'  {record["payload"]} {record["mbytes"]} MB: received '
                  f'{record["received"]}/{record["sent"]}, p50 {record["latency_median_ms"]} '
                  f'ms, p95 {record["latency_p95_ms"]} ms {record.get("error", "")}',
                  flush=True)
        result['runs'] += records
        add(config, 'latency p50', mbytes, [r['latency_median_ms'] for r in records])
        big = [(x, r['latency_median_ms']) for x, r in zip(mbytes, records)
               if x > SHM_DEFAULT_SEGMENT_MB]
        add(config, f'latency p50, over {SHM_DEFAULT_SEGMENT_MB} MB', [b[0] for b in big],
            [b[1] for b in big])
        add(config, 'publish() median', mbytes, [r['publish_call_median_ms'] for r in records])
    add('baseline', 'serialize + deserialize', mbytes, [base[n]['serdes'] for n in args.payloads])
    add('baseline', 'serialize + deserialize, MALLOC_ENV', mbytes,
        [base[n]['serdes_malloc'] for n in args.payloads])
    add('baseline', 'one numpy copy (memcpy)', mbytes, [base[n]['memcpy'] for n in args.payloads])
    result['fits'] = fits
    print(_sizes_tables(result))


def main(argv: Optional[list[str]] = None) -> int:
    args = _parse_args(argv)
    if args.role:
        return _role(args)
    tmp = tempfile.mkdtemp(prefix='depth_node_transport_')
    started = time.perf_counter()
    info = machine_info(with_torch=False)
    print(cpu_line(info) + f'; {info.get("cpus")} CPUs', flush=True)
    args.nbytes = {name: len(_message(name).data) for name in args.payloads}
    result: dict[str, Any] = {'machine': info, 'load_start': loadavg(), 'rate_hz': args.rate,
                              'count': args.count, 'sweep': 'sizes' if args.sizes else 'loss',
                              'runs': []}
    if args.sizes:
        _sizes_sweep(args, tmp, result)
    else:
        _loss_sweep(args, tmp, result)
    result['load_end'] = loadavg()
    result['elapsed_s'] = round(time.perf_counter() - started, 1)
    print(f'\nload average at start {result["load_start"]}, at end {result["load_end"]}; '
          f'{result["elapsed_s"]:.0f} s')
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
