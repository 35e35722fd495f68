"""The frame mailbox: newest frame wins, one waiting frame per camera (ROS-free).

Camera callbacks :meth:`FrameMailbox.put` each frame as it arrives; the inference thread
:meth:`FrameMailbox.take` s every waiting frame at once. A frame that arrives while another of
the same camera waits replaces it (the waiting one is dropped: no stale queue in front of a slow
network), but the displaced frame is kept beside the newcomer until the inference thread takes
them, so that it can be served instead when the newcomer turns out not to decode (a corrupt
JPEG). With several cameras, :meth:`take` may wait up to ``batch_wait`` seconds for the other
cameras' frames so that they share one forward pass.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Generic, Optional, TypeVar

T = TypeVar('T')


class FrameMailbox(Generic[T]):
    """One waiting frame (and the one it displaced) for each of ``cameras`` cameras.

    Thread-safe: any number of threads may :meth:`put`, one thread :meth:`take` s. ``idle`` is
    set while the taker holds no frame (between :meth:`take` handing frames out and
    :meth:`done`).
    """

    def __init__(self, cameras: int) -> None:
        self._pending: list[Optional[T]] = []
        self._displaced: list[Optional[T]] = []
        self._cv = threading.Condition()
        self.idle = threading.Event()
        self.idle.set()
        self.reset(cameras)

    def reset(self, cameras: int) -> None:
        """Empty the mailbox and give it ``cameras`` slots (a new configuration); a blocked
        :meth:`take` goes on waiting on the new slots."""
        if cameras < 1:
            raise ValueError(f'FrameMailbox: cameras must be at least 1, got {cameras}')
        with self._cv:
            self._pending = [None] * cameras
            self._displaced = [None] * cameras
            self._cv.notify_all()

    def put(self, camera: int, item: T) -> bool:
        """Leave ``item`` for camera index ``camera``; True when it displaced a waiting frame
        (which the caller counts as dropped)."""
        with self._cv:
            displaced = self._pending[camera] is not None
            if displaced:
                self._displaced[camera] = self._pending[camera]
            self._pending[camera] = item
            self._cv.notify()
        return displaced

    def take(self, stop: Callable[[], bool], batch_wait: float = 0.0,
             poll: float = 0.1) -> list[tuple[int, T, Optional[T]]]:
        """Every waiting frame as ``(camera, item, displaced)``, in camera order, emptying the
        mailbox; blocks until at least one waits or ``stop()`` is true (then it may return
        ``[]``). With ``batch_wait`` > 0 s and several cameras, waits until every camera has a
        frame or ``batch_wait`` has passed since the first. ``poll``: seconds between two looks
        at ``stop()``."""
        with self._cv:
            while not any(p is not None for p in self._pending) and not stop():
                self._cv.wait(poll)
            if batch_wait > 0 and len(self._pending) > 1:  # let the other cameras catch up
                deadline = time.monotonic() + batch_wait
                while not all(p is not None for p in self._pending) and not stop():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cv.wait(min(left, poll))
            taken = [(i, p, self._displaced[i]) for i, p in enumerate(self._pending)
                     if p is not None]
            self._pending = [None] * len(self._pending)
            self._displaced = [None] * len(self._pending)
            if taken:
                self.idle.clear()
        return taken

    def done(self) -> None:
        """The taker finished the frames it took."""
        self.idle.set()

    def drop_all(self) -> list[int]:
        """Drop every waiting frame (and the ones they displaced); the camera indices that had
        one (the caller counts them)."""
        with self._cv:
            dropped = [i for i, p in enumerate(self._pending) if p is not None]
            self._pending = [None] * len(self._pending)
            self._displaced = [None] * len(self._pending)
        return dropped

    def wake(self) -> None:
        """Wake a blocked :meth:`take` so that it looks at ``stop()`` now."""
        with self._cv:
            self._cv.notify_all()

    def waiting(self) -> list[Any]:
        """The frames waiting now, in camera order (a snapshot, for tests and diagnostics)."""
        with self._cv:
            return [p for p in self._pending if p is not None]
