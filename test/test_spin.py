"""depth_node.spin.BackgroundExecutor through real rclpy and DDS (no model, no data)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import rclpy
from rclpy.context import Context
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import String

from depth_node.spin import BackgroundExecutor

pytestmark = pytest.mark.ros

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
WAIT_S = 10.0  # a bound on waiting for discovery and delivery, not a timing check


@pytest.fixture
def own_context():
    """An initialised context the test owns (shut down after it)."""
    context = Context()
    rclpy.init(args=[], context=context)
    yield context
    rclpy.try_shutdown(context=context)


def _talk(spinner: BackgroundExecutor, topic: str) -> bool:
    """Publish on ``topic`` from one node until another node's subscription, spun by
    ``spinner``, receives a message; True if it did within ``WAIT_S``."""
    talker = spinner.add(rclpy.create_node('spin_talker', context=spinner.context))
    listener = spinner.add(rclpy.create_node('spin_listener', context=spinner.context))
    got = threading.Event()
    listener.create_subscription(String, topic, lambda msg: got.set(), RELIABLE)
    pub = talker.create_publisher(String, topic, RELIABLE)
    deadline = time.monotonic() + WAIT_S
    while not got.is_set() and time.monotonic() < deadline:
        pub.publish(String(data='hello'))
        got.wait(0.1)
    return got.is_set()


def _node_alive(node: Any) -> bool:
    try:
        node.create_publisher(String, 'spin_alive', 1)
    except Exception:  # noqa: BLE001 - a destroyed node raises InvalidHandle and the like
        return False
    return True


@pytest.mark.parametrize('num_threads', [1, 2])
def test_two_nodes_exchange_a_message(num_threads):
    with BackgroundExecutor(num_threads=num_threads) as spinner:
        assert spinner.thread.is_alive()
        assert _talk(spinner, f'spin_chat_{num_threads}')
    assert spinner.error is None


def test_close_stops_the_thread_destroys_added_nodes_and_is_idempotent(own_context):
    spinner = BackgroundExecutor(own_context)  # stays up: destroyed nodes fail on their own
    node = spinner.add(rclpy.create_node('spin_closed', context=own_context))
    assert _node_alive(node)
    spinner.close()
    assert not spinner.thread.is_alive()
    assert not _node_alive(node)
    assert spinner.nodes == ()
    spinner.close()  # a second close does nothing and raises nothing
    assert not spinner.thread.is_alive()
    late = rclpy.create_node('spin_late', context=own_context)
    with pytest.raises(RuntimeError, match='closed'):
        spinner.add(late)
    late.destroy_node()


def test_close_can_leave_the_nodes_and_remove_hands_a_node_back(own_context):
    spinner = BackgroundExecutor(own_context)
    kept = spinner.add(rclpy.create_node('spin_kept', context=own_context))
    removed = spinner.add(rclpy.create_node('spin_removed', context=own_context))
    spinner.remove(removed)
    assert spinner.nodes == (kept,)
    assert removed not in spinner.executor.get_nodes()
    spinner.close(destroy_nodes=False)
    assert _node_alive(kept)
    assert _node_alive(removed)
    kept.destroy_node()
    removed.destroy_node()


def test_a_context_made_here_is_shut_down_by_close():
    spinner = BackgroundExecutor()
    assert spinner.owns_context
    assert spinner.context.ok()
    spinner.close()
    assert not spinner.context.ok()


def test_a_context_passed_in_is_left_to_its_owner(own_context):
    spinner = BackgroundExecutor(own_context, num_threads=2)
    assert not spinner.owns_context
    assert spinner.context is own_context
    assert _talk(spinner, 'spin_chat_passed')
    spinner.close()
    assert not spinner.thread.is_alive()
    assert own_context.ok()


@pytest.mark.parametrize('num_threads', [1, 2])
def test_a_context_shut_down_by_its_owner_ends_the_spin_quietly(own_context, num_threads):
    spinner = BackgroundExecutor(own_context, num_threads=num_threads)
    spinner.add(rclpy.create_node('spin_external', context=own_context))
    rclpy.shutdown(context=own_context)
    spinner.thread.join(WAIT_S)
    assert not spinner.thread.is_alive()
    assert spinner.error is None  # a shutdown race, swallowed
    spinner.close()


def test_a_callback_that_raises_stops_the_spin_and_is_reported(monkeypatch):
    reported = []
    monkeypatch.setattr(threading, 'excepthook', reported.append)
    spinner = BackgroundExecutor()
    node = spinner.add(rclpy.create_node('spin_raises', context=spinner.context))

    def fail() -> None:
        raise ValueError('callback failed')

    node.create_timer(0.01, fail)
    spinner.thread.join(WAIT_S)
    try:
        assert not spinner.thread.is_alive()
        assert isinstance(spinner.error, ValueError)
        assert [r.exc_type for r in reported] == [ValueError]
    finally:
        spinner.close()


def test_num_threads_below_one_is_refused():
    with pytest.raises(ValueError, match='num_threads'):
        BackgroundExecutor(num_threads=0)
