"""The frame mailbox without ROS: newest frame wins, the displaced one kept, batching waits."""

from __future__ import annotations

import threading
import time

import pytest

from depth_node.mailbox import FrameMailbox


def _never() -> bool:
    return False


def test_newest_frame_wins_and_the_displaced_one_is_kept():
    box = FrameMailbox(1)
    assert box.put(0, 'a') is False
    assert box.put(0, 'b') is True  # 'a' dropped, kept as the fallback
    assert box.put(0, 'c') is True  # 'b' now the fallback
    assert box.take(_never) == [(0, 'c', 'b')]
    assert box.waiting() == [] and not box.idle.is_set()
    box.done()
    assert box.idle.is_set()


def test_each_camera_has_its_own_slot_in_camera_order():
    box = FrameMailbox(3)
    box.put(2, 'z')
    box.put(0, 'x')
    assert box.take(_never) == [(0, 'x', None), (2, 'z', None)]


def test_take_returns_empty_when_stopped():
    box = FrameMailbox(1)
    stop = threading.Event()
    threading.Timer(0.05, stop.set).start()
    t0 = time.monotonic()
    assert box.take(stop.is_set, poll=0.01) == []
    assert time.monotonic() - t0 < 2.0


def test_take_waits_for_the_other_cameras_up_to_batch_wait():
    box = FrameMailbox(2)
    box.put(0, 'a')
    threading.Timer(0.05, lambda: box.put(1, 'b')).start()
    taken = box.take(_never, batch_wait=2.0, poll=0.01)
    assert taken == [(0, 'a', None), (1, 'b', None)]  # one batch, not two
    box.done()
    box.put(0, 'c')  # the other camera never comes: served after batch_wait
    t0 = time.monotonic()
    assert box.take(_never, batch_wait=0.1, poll=0.01) == [(0, 'c', None)]
    assert time.monotonic() - t0 >= 0.09


def test_a_put_wakes_a_blocked_take():
    box = FrameMailbox(1)
    threading.Timer(0.05, lambda: box.put(0, 'late')).start()
    assert box.take(_never, poll=5.0) == [(0, 'late', None)]  # woken, not polled


def test_drop_all_names_the_cameras_that_had_a_frame():
    box = FrameMailbox(3)
    box.put(1, 'a')
    box.put(1, 'b')
    assert box.drop_all() == [1]
    assert box.waiting() == [] and box.take(lambda: True) == []


def test_needs_a_camera():
    with pytest.raises(ValueError, match='cameras'):
        FrameMailbox(0)


def test_a_take_waiting_across_a_reset_gets_the_new_slots_frames():
    """A new configuration resets the mailbox while the inference thread waits in take(): the
    frames put afterwards reach it (a replaced mailbox would leave it waiting forever)."""
    box = FrameMailbox(1)
    taken = []
    taker = threading.Thread(target=lambda: taken.extend(box.take(_never, poll=0.01)))
    taker.start()
    time.sleep(0.05)
    box.reset(2)
    box.put(1, 'after')
    taker.join(2.0)
    assert taken == [(1, 'after', None)]
    with pytest.raises(ValueError, match='cameras'):
        box.reset(0)
