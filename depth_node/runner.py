"""The process runner of the node entry points: command line, rclpy, main-thread inference,
signals and exit codes.

``depth_node`` (:func:`depth_node.node.main`) and ``depth_node_lifecycle``
(:func:`depth_node.lifecycle.main`) both run through :func:`run_node`. Exit codes: 0 after
SIGINT / SIGTERM, 2 for a configuration error, 3
(:data:`depth_node.problems.EXIT_DEVICE_LOST`) after a sticky CUDA error.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, Callable, Optional

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node

from depth_node import config as cfg


def run_node(make_node: Callable[[Any], Node], prog: str, args: Optional[list[str]],
             exit_process: bool, lifecycle: bool = False) -> int:
    """Parse the command line, start rclpy, spin ``make_node(options)`` until a signal.

    ``options`` are the parsed plain arguments. ``-h``/``--help`` prints usage and exits 0
    before rclpy or the model load; an unknown plain argument exits 2. A node whose
    ``core.serve_on_caller`` is set runs its forward passes on this (the main) thread
    (:func:`serve_on_main_thread`). With ``exit_process`` the process ends right after the node
    and rclpy are shut down, skipping the interpreter's own teardown: with torch loaded that
    takes 1-2 s on a small CPU and would break the promise that a signal stops the node within
    2 s. Otherwise the code is returned.
    """
    from depth_node.cli import command_line, parse_command_line

    try:
        options = parse_command_line(command_line(args), prog, lifecycle=lifecycle)
    except SystemExit as exc:  # -h/--help: 0; an unknown argument: 2, usage printed
        return exit_with(exc.code if isinstance(exc.code, int) else 2, exit_process)
    try:
        rclpy.init(args=args)
    except Exception as exc:  # noqa: BLE001 - rcl refuses a malformed command line (RCLError)
        print(f'[{prog}] configuration error: the command line does not parse: {exc}',
              file=sys.stderr)
        return exit_with(2, exit_process)
    node = None
    code = 0
    try:
        executor = SingleThreadedExecutor()  # before the node: a signal may come at any time
        node = make_node(options)
        executor.add_node(node)
        if node.core.serve_on_caller:
            serve_on_main_thread(node, executor, exit_process)
        else:
            executor.spin()
    except cfg.ConfigError as exc:
        print(f'[{prog}] configuration error: {exc}', file=sys.stderr)
        code = 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if rclpy.ok():
            raise
        # SIGINT/SIGTERM during startup shut the context down under the constructor: a clean
        # stop, not an error.
    finally:
        if node is not None:
            code = code or node.core.exit_code
            node.destroy_node()
        rclpy.try_shutdown()
    return exit_with(code, exit_process)


def serve_on_main_thread(node: Node, executor: Any, exit_process: bool) -> None:
    """Spin ``executor`` on a background thread and run ``node.core.serve()`` here.

    On a signal rclpy shuts the context down: the spin thread ends and ``serve`` returns after
    the frame in hand. A forward pass cannot be interrupted, so when this thread has not come
    back 1 s after the spin thread ended, the process ends there with the node's exit code (the
    promise that a signal stops the node within 2 s). An error that stopped the executor is
    raised here.
    """
    core = node.core
    done = threading.Event()
    errors: list[BaseException] = []

    def spin() -> None:
        try:
            executor.spin()
        except ExternalShutdownException:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            if rclpy.ok():
                errors.append(exc)
        finally:
            core.end_serving()
        if exit_process and not errors and not done.wait(1.0):
            # the main thread is inside a forward pass: do not wait for it
            exit_with(core.exit_code, True)

    spinner = threading.Thread(target=spin, name='depth_node_spin', daemon=True)
    spinner.start()
    try:
        core.serve()
    finally:
        done.set()
    if errors:
        raise errors[0]


def exit_with(code: int, exit_process: bool) -> int:
    """End the process with ``code`` right away (see :func:`run_node`), or return it."""
    if exit_process:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
