"""depth_node_lifecycle through the real lifecycle interface: the ``change_state`` and
``get_state`` services, the ``transition_event`` topic, ``/diagnostics`` and ``/rosout``, with
tiny random models; and the entry point with ``--autostart`` as a process."""

from __future__ import annotations

import gc
import os
from pathlib import Path
import shutil
import signal
import subprocess
import sys
import time
import weakref

import numpy as np
import pytest
from lifecycle_msgs.msg import State, Transition, TransitionEvent
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.msg import Log, Parameter as ParameterMsg, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from depth_node.lifecycle import DepthLifecycleNode
from depth_node.messages import camera_info_msg, image_msg, make_header
from ros_harness import output_or_kill, status_values

pytestmark = [pytest.mark.ros]

ROOT = Path(__file__).resolve().parents[1]


def _wait(future, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not future.done():
        assert time.monotonic() < deadline, 'no service response'
        time.sleep(0.01)
    return future.result()


class Manager:
    """What a lifecycle manager does: the node's lifecycle services and transition events."""

    def __init__(self, session, ns: str, timeout: float = 20.0) -> None:
        import rclpy

        self.node = rclpy.create_node('lifecycle_probe', context=session.context)
        session.add(self.node)
        base = f'{ns}/depth_node'
        self.change = self.node.create_client(ChangeState, f'{base}/change_state')
        self.get = self.node.create_client(GetState, f'{base}/get_state')
        self.set_params = self.node.create_client(SetParameters, f'{base}/set_parameters')
        self.events: list[tuple[str, str]] = []
        self.node.create_subscription(
            TransitionEvent, f'{base}/transition_event',
            lambda m: self.events.append((m.start_state.label, m.goal_state.label)), 10)
        self.logs: list[Log] = []
        rosout_qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE,
                                durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.node.create_subscription(Log, '/rosout', self.logs.append, rosout_qos)
        for client in (self.change, self.get, self.set_params):
            assert client.wait_for_service(timeout_sec=timeout), client.srv_name

    def state(self) -> str:
        return _wait(self.get.call_async(GetState.Request())).current_state.label

    def transition(self, transition_id: int) -> bool:
        request = ChangeState.Request(transition=Transition(id=transition_id))
        return _wait(self.change.call_async(request), timeout=120.0).success

    def set_string(self, name: str, value: str):
        msg = ParameterMsg(name=name, value=ParameterValue(type=ParameterType.PARAMETER_STRING,
                                                           string_value=value))
        return _wait(self.set_params.call_async(SetParameters.Request(parameters=[msg])))\
            .results[0]

    def wait_events(self, n: int, timeout: float = 10.0) -> list[tuple[str, str]]:
        deadline = time.monotonic() + timeout
        while len(self.events) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.events)


def _node(session, ns: str, model: str, **params) -> DepthLifecycleNode:
    values = {'model.name': model, 'model.device': 'cpu', 'model.warmup_size': [64, 48],
              'diagnostics.period': 0.2, **params}
    node = DepthLifecycleNode(context=session.context, namespace=ns,
                              parameter_overrides=[Parameter(k, value=v)
                                                   for k, v in values.items()])
    return session.add(node)


def _frame(probe, sec: int) -> tuple[int, int]:
    rgb = np.random.default_rng(sec).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    header = make_header('cam_optical', sec, 0)
    from depth_node.camera_info import intrinsics_from_fields
    intr = intrinsics_from_fields(64, 48, [50.0, 0, 32, 0, 50.0, 24, 0, 0, 1], [], 'plumb_bob',
                                  [0.0] * 12, [0.0] * 9)
    probe.publish('camera_info', camera_info_msg(intr, header))
    time.sleep(0.05)
    probe.publish('image', image_msg(rgb, 'rgb8', header))
    return sec, 0


def _publishers(probe, topic: str) -> int:
    return probe.node.count_publishers(topic)


def _counter(probe, name: str, at_least: int, timeout: float = 10.0) -> int:
    """Wait for /diagnostics to report ``name`` >= ``at_least``; return the last value seen."""
    deadline = time.monotonic() + timeout
    value = 0
    while time.monotonic() < deadline:
        for msg in reversed(list(probe.received['/diagnostics'])):
            value = int(status_values(msg.status[0]).get(name, 0))
            break
        if value >= at_least:
            return value
        time.sleep(0.05)
    return value


def test_configure_activate_deactivate_cleanup_shutdown(session, models):
    ns = '/lc_cycle'
    node = _node(session, ns, models['relative'])
    probe = session.probe(namespace=ns)
    manager = Manager(session, ns)

    # unconfigured: no model, no topics
    assert manager.state() == 'unconfigured'
    assert node.core.estimator is None
    assert _publishers(probe, f'{ns}/depth/relative') == 0
    assert probe.pub['image'].get_subscription_count() == 0

    # configure: model loaded and warmed up, publishers created, nothing subscribed yet
    assert manager.transition(Transition.TRANSITION_CONFIGURE)
    assert manager.state() == 'inactive'
    estimator = node.core.estimator
    assert estimator is not None
    model_ref = weakref.ref(estimator)  # it holds the engine and the weights, any engine
    assert _publishers(probe, f'{ns}/depth/relative') == 1
    assert _publishers(probe, f'{ns}/depth/camera_info') == 1
    assert probe.pub['image'].get_subscription_count() == 0

    # activate: subscriptions, frames served with their camera_info
    assert manager.transition(Transition.TRANSITION_ACTIVATE)
    assert manager.state() == 'active'
    assert probe.wait_subscribers('image') and probe.wait_subscribers('camera_info')
    stamp = _frame(probe, 101)
    rel = probe.wait_stamp('depth/relative', stamp)
    assert rel is not None and (rel.width, rel.height) == (64, 48)
    info = probe.wait_stamp('depth/camera_info', stamp)
    assert info is not None and info.header.frame_id == 'cam_optical'

    # deactivate: frames arriving are dropped and counted, the model stays
    assert manager.transition(Transition.TRANSITION_DEACTIVATE)
    assert manager.state() == 'inactive'
    stamps = []
    for i in range(3):  # one at a time: the depth-1 subscription queue may merge a burst
        stamps.append(_frame(probe, 200 + i))
        assert _counter(probe, 'frames_dropped_inactive', i + 1) == i + 1
    assert all(probe.wait_stamp('depth/relative', s, timeout=0.5) is None for s in stamps)
    assert node.core.estimator is estimator

    # activate again: the same model serves at once
    assert manager.transition(Transition.TRANSITION_ACTIVATE)
    stamp = _frame(probe, 301)
    assert probe.wait_stamp('depth/relative', stamp) is not None
    assert node.core.estimator is estimator

    # deactivate + cleanup: topics destroyed, model released
    assert manager.transition(Transition.TRANSITION_DEACTIVATE)
    assert manager.transition(Transition.TRANSITION_CLEANUP)
    assert manager.state() == 'unconfigured'
    assert node.core.estimator is None
    del estimator
    gc.collect()
    assert model_ref() is None, 'the model is still referenced after cleanup'
    deadline = time.monotonic() + 10
    while _publishers(probe, f'{ns}/depth/relative') and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _publishers(probe, f'{ns}/depth/relative') == 0
    while probe.pub['image'].get_subscription_count() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert probe.pub['image'].get_subscription_count() == 0

    # configure again after cleanup (QoS override parameters already declared), then shutdown
    assert manager.transition(Transition.TRANSITION_CONFIGURE)
    assert node.core.estimator is not None
    assert manager.transition(Transition.TRANSITION_INACTIVE_SHUTDOWN)
    assert manager.state() == 'finalized'
    assert node.core.estimator is None

    assert manager.wait_events(16) == [
        ('unconfigured', 'configuring'), ('configuring', 'inactive'),
        ('inactive', 'activating'), ('activating', 'active'),
        ('active', 'deactivating'), ('deactivating', 'inactive'),
        ('inactive', 'activating'), ('activating', 'active'),
        ('active', 'deactivating'), ('deactivating', 'inactive'),
        ('inactive', 'cleaningup'), ('cleaningup', 'unconfigured'),
        ('unconfigured', 'configuring'), ('configuring', 'inactive'),
        ('inactive', 'shuttingdown'), ('shuttingdown', 'finalized')]


def test_failed_configure_stays_unconfigured_with_the_reason_then_recovers(session, models,
                                                                           tmp_path):
    ns = '/lc_fail'
    missing = str(tmp_path / 'no_such_model')
    node = _node(session, ns, missing)
    probe = session.probe(namespace=ns)
    manager = Manager(session, ns)

    assert not manager.transition(Transition.TRANSITION_CONFIGURE)
    assert manager.state() == 'unconfigured'
    assert missing in node.configure_error
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(
            'configure failed' in m.msg and missing in m.msg for m in manager.logs):
        time.sleep(0.05)
    lines = [m for m in manager.logs if 'configure failed' in m.msg]
    assert lines and missing in lines[0].msg and lines[0].level == Log.ERROR
    assert _publishers(probe, f'{ns}/depth/relative') == 0

    # restart parameters can be set while unconfigured; the next configure uses them
    assert manager.set_string('model.name', models['relative']).successful
    assert manager.transition(Transition.TRANSITION_CONFIGURE)
    assert manager.state() == 'inactive'
    # ... and are refused once configured, with the way to change them
    result = manager.set_string('model.name', missing)
    assert not result.successful and 'cleanup' in result.reason
    assert manager.transition(Transition.TRANSITION_ACTIVATE)
    assert probe.wait_subscribers('image')
    stamp = _frame(probe, 8)
    assert probe.wait_stamp('depth/relative', stamp) is not None

    # shutdown straight from active
    assert manager.transition(Transition.TRANSITION_ACTIVE_SHUTDOWN)
    assert manager.state() == 'finalized'
    assert node.core.estimator is None
    assert manager.wait_events(8)[-2:] == [('active', 'shuttingdown'),
                                           ('shuttingdown', 'finalized')]


def test_shutdown_from_unconfigured(session, models):
    ns = '/lc_unconf'
    _node(session, ns, models['relative'])
    manager = Manager(session, ns)
    assert manager.transition(Transition.TRANSITION_UNCONFIGURED_SHUTDOWN)
    assert manager.state() == 'finalized'
    assert State.PRIMARY_STATE_FINALIZED == 4  # the id ros2 lifecycle reports


def _entry_point() -> list[str]:
    exe = shutil.which('depth_node_lifecycle', path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, '-m', 'depth_node.lifecycle']


def _start_process(model: str, ns: str, *options: str) -> subprocess.Popen:
    """``depth_node_lifecycle [options]`` on ``model`` (CPU) in namespace ``ns``."""
    return subprocess.Popen(
        _entry_point() + [*options, '--ros-args', '-p', f'model.name:={model}',
                          '-p', 'model.device:=cpu', '-r', f'__ns:={ns}'],
        env=dict(os.environ, PYTHONUNBUFFERED='1'), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)


@pytest.mark.slow
def test_autostart_entry_point_serves_and_stops_on_sigint(session, models):
    proc = _start_process(models['relative'], '/lc_proc', '--autostart')
    try:
        probe = session.probe(namespace='/lc_proc')
        manager = Manager(session, '/lc_proc', timeout=90.0)  # the process imports torch
        deadline = time.monotonic() + 60
        while manager.state() != 'active' and time.monotonic() < deadline:
            time.sleep(0.1)
        assert manager.state() == 'active'
        assert probe.wait_subscribers('image', timeout=20.0)
        stamp = _frame(probe, 11)
        assert probe.wait_stamp('depth/relative', stamp) is not None
    finally:
        proc.send_signal(signal.SIGINT)
        out = output_or_kill(proc)[0]
    assert proc.returncode == 0, out
    assert 'Traceback' not in out, out
    assert 'configured: input image' in out and 'active: processing frames' in out, out


def test_entry_point_without_autostart_waits_for_its_manager(session, models):
    """As Nav2 runs it: started unconfigured (serving on the main thread waits for a
    configuration instead of failing), configured and activated by the manager, serves, stops on
    SIGINT with code 0 and no traceback."""
    proc = _start_process(models['relative'], '/lc_manual')
    try:
        probe = session.probe(namespace='/lc_manual')
        manager = Manager(session, '/lc_manual', timeout=90.0)  # the process imports torch
        time.sleep(0.5)  # the main thread serves, unconfigured, meanwhile
        assert proc.poll() is None, 'the unconfigured node exited'
        assert manager.state() == 'unconfigured'
        assert manager.transition(Transition.TRANSITION_CONFIGURE)
        assert manager.transition(Transition.TRANSITION_ACTIVATE)
        assert probe.wait_subscribers('image', timeout=20.0)
        stamp = _frame(probe, 12)
        served = probe.wait_stamp('depth/relative', stamp) is not None
    finally:
        proc.send_signal(signal.SIGINT)
        out = output_or_kill(proc)[0]
    assert served, out
    assert proc.returncode == 0, out
    assert 'Traceback' not in out, out
