"""An rclpy executor spinning on a background thread, for the demo, the tests and the benchmarks.

One of the package's rclpy modules, with :mod:`depth_node.node`, :mod:`depth_node.lifecycle`,
:mod:`depth_node.runner` and :mod:`depth_node.demo`; every other module is ROS-free. Import it
lazily where the ROS environment (``ROS_DOMAIN_ID``, the Fast DDS profile) must be set before rclpy
loads.

Example::

    with BackgroundExecutor(num_threads=2) as spinner:  # a private context, made and shut here
        probe = spinner.add(rclpy.create_node('probe', context=spinner.context))
        ...  # probe's callbacks run on the executor's threads
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Optional, TypeVar

import rclpy
from rclpy.context import Context
from rclpy.executors import Executor, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node

NodeT = TypeVar('NodeT', bound=Node)


class BackgroundExecutor:
    """An executor spinning in a daemon thread from construction until :meth:`close`.

    Parameters
    ----------
    context : rclpy.context.Context, optional
        An initialised context to spin in; it stays its owner's (:meth:`close` leaves it up).
        None (default): a new context, initialised here without arguments and shut down by
        :meth:`close`.
    num_threads : int
        1 (default): a ``SingleThreadedExecutor``, callbacks run on the spin thread. More: a
        ``MultiThreadedExecutor`` running callbacks on that many worker threads.
    name : str
        Name of the spin thread.

    Attributes
    ----------
    context : rclpy.context.Context
        The context the executor spins in.
    owns_context : bool
        Whether ``context`` was made here (and is shut down by :meth:`close`).
    executor : rclpy.executors.Executor
        The executor; nodes can also be added to it directly, but only nodes added with
        :meth:`add` are destroyed by :meth:`close`.
    thread : threading.Thread
        The spin thread (daemon).
    error : Exception or None
        What stopped the executor before :meth:`close` or a context shutdown (a callback that
        raised, say); it is also raised on the spin thread, so ``threading.excepthook`` reports
        it. Exceptions while the executor or its context shut down are shutdown races: the
        handles go away under ``spin()``; those are swallowed.
    """

    def __init__(self, context: Optional[Context] = None, num_threads: int = 1,
                 name: str = 'depth_node_spin') -> None:
        if num_threads < 1:
            raise ValueError(f'num_threads is {num_threads}; use 1 or more')
        self.owns_context = context is None
        if context is None:
            context = Context()
            rclpy.init(args=[], context=context)
        self.context = context
        try:
            self.executor: Executor = (
                SingleThreadedExecutor(context=context) if num_threads == 1
                else MultiThreadedExecutor(num_threads=num_threads, context=context))
        except BaseException:
            if self.owns_context:
                rclpy.try_shutdown(context=context)
            raise
        self.error: Optional[Exception] = None
        self._nodes: list[Node] = []
        self._lock = threading.Lock()
        self._closed = False
        self.thread = threading.Thread(target=self._spin, name=name, daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception as exc:
            if self._closed or not self.context.ok():
                return  # shutdown race
            self.error = exc
            raise

    @property
    def nodes(self) -> tuple[Node, ...]:
        """The nodes added with :meth:`add` and not removed since."""
        with self._lock:
            return tuple(self._nodes)

    def add(self, node: NodeT) -> NodeT:
        """Spin ``node`` from now on; :meth:`close` destroys it if asked. Returns ``node``."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f'cannot add node {node.get_name()!r}: the executor is '
                                   'closed; make a new BackgroundExecutor')
            self.executor.add_node(node)
            self._nodes.append(node)
        return node

    def remove(self, node: Node) -> None:
        """Stop spinning ``node``; it is the caller's again (:meth:`close` leaves it)."""
        with self._lock:
            if node in self._nodes:
                self._nodes.remove(node)
        self.executor.remove_node(node)

    def close(self, timeout: float = 2.0, destroy_nodes: bool = True) -> None:
        """Shut the executor down, destroy the added nodes, shut a context made here, join.

        Only the first call does anything.

        Parameters
        ----------
        timeout : float
            Seconds to wait for running callbacks (``Executor.shutdown``), then again for the
            spin thread to end.
        destroy_nodes : bool
            Destroy the nodes added with :meth:`add` (and not removed).
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            nodes, self._nodes = self._nodes, []
        self.executor.shutdown(timeout_sec=timeout)
        if destroy_nodes:
            for node in nodes:
                node.destroy_node()
        if self.owns_context:
            rclpy.try_shutdown(context=self.context)
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout=timeout)

    def __enter__(self) -> BackgroundExecutor:
        return self

    def __exit__(self, exc_type: Optional[type[BaseException]],
                 exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        self.close()
