"""The managed (lifecycle) node: ``depth_node_lifecycle``, for lifecycle managers (Nav2).

Same node name, parameters and topics as ``depth_node`` (:class:`depth_node.node.DepthNode`);
the work is done by the same :class:`depth_node.node.DepthCore`, step by step:

- **configure**: read and validate the parameters, load and warm up the model, create the
  publishers (managed: silent until active) and ``/diagnostics``. A failure (bad model path,
  invalid value) logs the reason and leaves the node unconfigured.
- **activate**: subscribe the inputs (first time) and process frames.
- **deactivate**: stop processing; frames arriving are dropped and counted
  (``frames_dropped_inactive`` on ``/diagnostics``); the model stays loaded.
- **cleanup**: destroy the topics, release the model and its device memory.
- **shutdown** (from any state): as cleanup.

Restart parameters (``model.*``, ``input.*``, ...) can be set while unconfigured and take
effect at the next configure; once configured they are refused until cleanup. ``--autostart``
configures and activates the node itself, as Nav2's ``autostart`` does.
"""

from __future__ import annotations

from typing import Any, Optional

from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rcl_interfaces.msg import SetParametersResult

from depth_node import config as cfg
from depth_node.node import (
    declare_parameters, DepthCore, HoldsCore, NODE_NAME, parameter_values)
from depth_node.runner import run_node

DEACTIVATE_WAIT = 10.0
"""Seconds deactivate waits for a frame in the worker's hands to be finished and published."""


class DepthLifecycleNode(HoldsCore, LifecycleNode):
    """``depth_node`` as a managed node; see the module docstring for the transitions.

    Attributes
    ----------
    core : depth_node.node.DepthCore
        The node's work (with lifecycle publishers).
    configure_error : str
        Why the last configure failed ('' after a successful one).
    """

    def __init__(self, serve_on_caller: bool = False, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.core = DepthCore(
            self, managed=True, serve_on_caller=serve_on_caller,
            restart='configure: clean the node up (lifecycle cleanup), set it, then configure '
                    'again')
        declare_parameters(self, read_only=False)
        self.core.processing = False
        self._configured = False
        self.configure_error = ''
        self.add_on_set_parameters_callback(self._on_set_parameters)

    # ------------------------------------------------------------ transitions
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.core.configure(parameter_values(self))
        except cfg.ConfigError as exc:
            self._teardown()
            self.configure_error = str(exc)
            self.get_logger().error(f'configure failed, staying unconfigured: {exc}')
            return TransitionCallbackReturn.FAILURE
        self.configure_error = ''
        self._configured = True
        self.core.start()
        self.core.log_ready('configured')
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if not self.core.inputs:
            self.core.create_inputs()
        result = super().on_activate(state)  # enables the managed publishers
        self.core.processing = True
        self.get_logger().info('active: processing frames')
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.core.processing = False
        self.core.drop_pending('frames_dropped_inactive')
        if not self.core.mailbox.idle.wait(DEACTIVATE_WAIT):
            self.get_logger().warning(
                f'deactivate: the frame in the worker was not finished within '
                f'{DEACTIVATE_WAIT:g} s; its outputs are not published')
        self.get_logger().info('inactive: frames arriving are dropped and counted '
                               '(frames_dropped_inactive), the model stays loaded')
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        self.get_logger().info('cleaned up: topics destroyed, model released')
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f'error in a transition from {state.label}: cleaning up')
        self._teardown()
        return TransitionCallbackReturn.SUCCESS  # back to unconfigured

    def autostart(self) -> bool:
        """Configure and activate now (``--autostart``); False when a step failed (the node
        then stays in the state it reached, with the reason logged)."""
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            self.get_logger().error(
                'autostart: configure failed; fix the parameters (they can be set while '
                'unconfigured), then configure through the lifecycle services')
            return False
        return self.trigger_activate() == TransitionCallbackReturn.SUCCESS

    def _teardown(self) -> None:
        """Undo configure: stop the worker, destroy the topics, release the model."""
        core = self.core
        core.processing = False
        core.stop_worker()
        core.drop_pending('frames_dropped_inactive')
        core.destroy_interfaces()
        core.release_model()
        core.cameras = []
        self._configured = False

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """Unconfigured: any value its spec accepts (checked as a whole at configure).
        Configured: restart parameters are refused, the others validated as on depth_node."""
        if self._configured:
            return self.core.on_set_parameters(params)
        errors = cfg.check_each({p.name: p.value for p in params if p.value is not None})
        return SetParametersResult(successful=not errors, reason='; '.join(errors))

    def destroy_node(self) -> None:
        """Stop the worker (it finishes or abandons the frame in hand), then the node."""
        self.core.processing = False
        self.core.closed = True
        self.core.stop_worker()
        super().destroy_node()


def main(args: Optional[list[str]] = None, exit_process: bool = True) -> int:
    """Entry point of ``ros2 run depth_node depth_node_lifecycle [--autostart]``.

    Exit codes as :func:`depth_node.node.main`; a failed configure is not one (the node stays
    up, unconfigured, for its lifecycle manager).
    """
    def make_node(options: Any) -> DepthLifecycleNode:
        node = DepthLifecycleNode(serve_on_caller=True)  # forward passes on the main thread
        if options.autostart:
            node.autostart()
        return node

    return run_node(make_node, 'depth_node_lifecycle', args, exit_process, lifecycle=True)


if __name__ == '__main__':
    main()
