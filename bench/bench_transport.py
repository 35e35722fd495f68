"""Cross-process DDS transport of depth-sized messages, with and without the Fast DDS profile.

A publisher process sends ``N`` messages at 30 Hz to a subscriber process; the subscriber
records each message's latency (receive time minus the send time the publisher wrote into the
header stamp; both processes read the same system clock) and which sequence numbers arrived.
Runs cover:

- payloads: a 640x480 ``32FC1`` depth image (1.2 MB, ``sensor_msgs/Image``) and a 1280x720
  organized x, y, z cloud (11 MB, ``sensor_msgs/PointCloud2``, 12-byte points, stride 1);
- reliability: best effort and reliable (keep last 10 on both sides);
- transport: ``FASTRTPS_DEFAULT_PROFILES_FILE`` (and ``FASTDDS_DEFAULT_PROFILES_FILE``) set to
  ``config/fastdds_shm.xml`` (64 MB shared-memory segment) or unset (Fast DDS defaults: a
  0.5 MB shared-memory segment, larger samples go over fragmented UDP). Fast DDS reads the
  profile once per process, so every run starts a fresh publisher and subscriber, each with the
  same setting, on its own ``ROS_DOMAIN_ID`` with ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``.

Prints a table (received / sent, loss, latency median, p90, max) and writes JSON; exits 0
whatever the figures.

Usage::

    python bench/bench_transport.py                 # 150 messages per run, ~2 min
    python bench/bench_transport.py --quick         # 60 messages per run, ~1 min
    python bench/bench_transport.py --count 300 --payloads depth_640x480
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
from typing import Any, Optional

import numpy as np

from common import loadavg, machine_info, markdown_table, REPO, subprocess_env

PAYLOADS = {
    'depth_640x480': ('Image', '640x480 32FC1 depth image', 480, 640),
    'cloud_1280x720': ('PointCloud2', '1280x720 organized xyz cloud', 720, 1280),
}
RATE_HZ = 30.0
TOPIC = 'bench_transport'


# ----------------------------------------------------------------------------------------------
# roles (each runs in its own process)

def _qos(reliability: str) -> Any:
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    policy = ReliabilityPolicy.RELIABLE if reliability == 'reliable' \
        else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=policy)


def _message(payload: str) -> Any:
    """One message of the payload's size and layout (content: a depth ramp)."""
    from sensor_msgs.msg import Image, PointCloud2, PointField

    from depth_node.cloud import depth_to_points, pack_cloud
    from depth_node.packing import fill_cloud, fill_image

    kind, _, height, width = PAYLOADS[payload]
    depth = np.linspace(0.5, 20.0, height * width, dtype=np.float32).reshape(height, width)
    if kind == 'Image':
        msg = Image()
        fill_image(msg, depth, '32FC1')
    else:
        K = np.array([[width * 0.8, 0, width / 2], [0, width * 0.8, height / 2], [0, 0, 1]])
        msg = PointCloud2()
        fill_cloud(msg, pack_cloud(depth_to_points(depth, K, stride=1)), PointField)
    msg.header.frame_id = 'camera'
    return msg


def _publisher(args: argparse.Namespace) -> int:
    import rclpy
    from sensor_msgs.msg import Image, PointCloud2

    rclpy.init(args=[])
    node = rclpy.create_node('bench_transport_pub')
    mtype = Image if PAYLOADS[args.payload][0] == 'Image' else PointCloud2
    pub = node.create_publisher(mtype, TOPIC, _qos(args.reliability))
    msg = _message(args.payload)
    deadline = time.monotonic() + 30
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    if pub.get_subscription_count() == 0:
        print('publisher: no subscriber matched', file=sys.stderr)
        return 1
    time.sleep(1.0)  # let discovery settle both ways (reliable readers)
    publish_s = []
    period = 1.0 / RATE_HZ
    start = time.monotonic()
    for seq in range(args.count):
        target = start + seq * period
        pause = target - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        now = time.time_ns()
        msg.header.stamp.sec = now // 1_000_000_000
        msg.header.stamp.nanosec = now % 1_000_000_000
        msg.header.frame_id = str(seq)
        t = time.perf_counter()
        pub.publish(msg)
        publish_s.append(time.perf_counter() - t)
    time.sleep(args.drain)  # reliable: let retransmissions finish before leaving
    Path(args.result).write_text(json.dumps({'publish_ms': [x * 1e3 for x in publish_s]}))
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


def _subscriber(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image, PointCloud2

    rclpy.init(args=[])
    node = rclpy.create_node('bench_transport_sub')
    received: dict[int, float] = {}
    last = [time.monotonic()]

    def on_msg(msg: Any) -> None:
        now = time.time_ns()
        sent = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        received[int(msg.header.frame_id)] = (now - sent) / 1e6
        last[0] = time.monotonic()

    mtype = Image if PAYLOADS[args.payload][0] == 'Image' else PointCloud2
    sub = node.create_subscription(mtype, TOPIC, on_msg, _qos(args.reliability))
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    Path(args.result + '.ready').write_text('1')
    deadline = time.monotonic() + args.timeout
    done = Path(args.result + '.done')  # written once the publisher has exited
    while time.monotonic() < deadline and len(received) < args.count:
        executor.spin_once(timeout_sec=0.1)
        if done.exists() and time.monotonic() - last[0] > args.idle:
            break
    Path(args.result).write_text(json.dumps({'latency_ms': received}))
    del sub
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


# ----------------------------------------------------------------------------------------------
# orchestration

def _one_run(args: argparse.Namespace, payload: str, reliability: str, profile: bool,
             domain: int, tmp: str) -> dict[str, Any]:
    env = subprocess_env(domain, profile, tmp)
    tag = f'{payload}_{reliability}_{"profile" if profile else "default"}'
    sub_file = os.path.join(tmp, f'{tag}_sub.json')
    pub_file = os.path.join(tmp, f'{tag}_pub.json')
    common = ['--payload', payload, '--reliability', reliability, '--count', str(args.count)]
    duration = args.count / RATE_HZ
    sub = subprocess.Popen([sys.executable, __file__, '--role', 'sub', *common, '--result',
                            sub_file, '--timeout', str(duration + 120), '--idle', '1'], env=env)
    deadline = time.monotonic() + 30
    while not os.path.exists(sub_file + '.ready') and time.monotonic() < deadline:
        time.sleep(0.05)
    pub = subprocess.Popen([sys.executable, __file__, '--role', 'pub', *common, '--result',
                            pub_file, '--drain', '3'], env=env)
    try:
        pub.wait(timeout=duration + 90)
        Path(sub_file + '.done').write_text('1')
        sub.wait(timeout=90)
    except subprocess.TimeoutExpired:
        for proc in (pub, sub):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    record: dict[str, Any] = {'payload': payload, 'reliability': reliability,
                              'profile': 'fastdds_shm.xml' if profile else 'unset (default)',
                              'sent': args.count, 'load_after': loadavg()}
    try:
        latency = {int(k): v for k, v in json.loads(Path(sub_file).read_text())
                   ['latency_ms'].items()}
    except (OSError, ValueError, KeyError):
        latency = {}
        record['error'] = f'subscriber gave no result (exit {sub.returncode})'
    try:
        publish_ms = json.loads(Path(pub_file).read_text())['publish_ms']
    except (OSError, ValueError, KeyError):
        publish_ms = []
        record.setdefault('error', f'publisher gave no result (exit {pub.returncode})')
    values = np.array(list(latency.values())) if latency else np.array([math.nan])
    record.update({
        'received': len(latency),
        'loss_pct': round(100.0 * (1 - len(latency) / args.count), 1),
        'latency_median_ms': round(float(np.median(values)), 2),
        'latency_p90_ms': round(float(np.percentile(values, 90)), 2),
        'latency_max_ms': round(float(np.max(values)), 2),
        'publish_call_median_ms': round(float(np.median(publish_ms)), 2) if publish_ms
        else math.nan,
        'mbytes': round(_message_bytes(payload) / 1e6, 2),
    })
    return record


def _message_bytes(payload: str) -> int:
    _, _, height, width = PAYLOADS[payload]
    return height * width * (4 if PAYLOADS[payload][0] == 'Image' else 12)


def _table(rows: list[dict[str, Any]]) -> str:
    cols = [('payload', 'payload'), ('mbytes', 'MB'), ('reliability', 'QoS'),
            ('profile', 'Fast DDS profile'), ('received', 'received'), ('sent', 'sent'),
            ('loss_pct', 'loss %'), ('latency_median_ms', 'latency median ms'),
            ('latency_p90_ms', 'p90 ms'), ('latency_max_ms', 'max ms'),
            ('publish_call_median_ms', 'publish() ms')]
    return markdown_table(rows, cols)


def _parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--count', type=int, default=None,
                    help='messages per run at 30 Hz (default 150; quick 60)')
    ap.add_argument('--quick', action='store_true')
    ap.add_argument('--payloads', nargs='+', choices=sorted(PAYLOADS), default=list(PAYLOADS))
    ap.add_argument('--reliabilities', nargs='+', choices=['best_effort', 'reliable'],
                    default=['best_effort', 'reliable'])
    ap.add_argument('--domain', type=int, default=1 + os.getpid() % 50,
                    help='first ROS_DOMAIN_ID; each run uses the next one')
    ap.add_argument('--out', default=str(REPO / 'bench' / 'results' / 'transport.json'))
    # internal: the publisher and subscriber processes
    ap.add_argument('--role', choices=['pub', 'sub'], help=argparse.SUPPRESS)
    ap.add_argument('--payload', choices=sorted(PAYLOADS), help=argparse.SUPPRESS)
    ap.add_argument('--reliability', help=argparse.SUPPRESS)
    ap.add_argument('--result', help=argparse.SUPPRESS)
    ap.add_argument('--timeout', type=float, default=120.0, help=argparse.SUPPRESS)
    ap.add_argument('--idle', type=float, default=5.0, help=argparse.SUPPRESS)
    ap.add_argument('--drain', type=float, default=3.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.count is None:
        args.count = 60 if args.quick else 150
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = _parse_args(argv)
    if args.role == 'pub':
        return _publisher(args)
    if args.role == 'sub':
        return _subscriber(args)
    tmp = tempfile.mkdtemp(prefix='depth_node_transport_')
    started = time.perf_counter()
    result: dict[str, Any] = {'machine': machine_info(with_torch=False),
                              'load_start': loadavg(), 'rate_hz': RATE_HZ,
                              'count': args.count, 'runs': []}
    domain = args.domain
    for payload in args.payloads:
        for reliability in args.reliabilities:
            for profile in (True, False):
                print(f'[{payload} {reliability} profile={"on" if profile else "off"}] '
                      f'{args.count} messages at {RATE_HZ:g} Hz, domain {domain}', flush=True)
                record = _one_run(args, payload, reliability, profile, domain, tmp)
                domain += 1
                print(f'  received {record["received"]}/{record["sent"]}, latency median '
                      f'{record["latency_median_ms"]} ms', flush=True)
                result['runs'].append(record)
    result['load_end'] = loadavg()
    result['elapsed_s'] = round(time.perf_counter() - started, 1)
    print(f'\nload average at start {result["load_start"]}, at end {result["load_end"]}; '
          f'{result["elapsed_s"]:.0f} s\n')
    print(_table(result['runs']))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f'\nwrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
