"""``segment_lifecycle_node``: the segmentation node as a managed (lifecycle) node.

Same parameters, topics and node name (``segment_node``) as ``segment_node``; what differs
is when the work happens, driven through the standard ``change_state`` / ``get_state``
services (``ros2 lifecycle set /eacnet/segment_node configure``), or by the launch file
(``managed:=true autostart:=true``, the nav2 convention):

* ``configure``: validates the parameters together, loads and warms the model once for all
  cameras, creates the publishers.
* ``activate``: starts the worker, subscribes to the cameras, publishes (ready line
  "listening on ...", then diagnostics once a second).
* ``deactivate``: unsubscribes, stops the worker thread and the diagnostics timer: the node
  uses no CPU until the next activate; the model stays loaded.
* ``cleanup``: destroys the publishers and frees the model.
* ``shutdown`` (from any state) and error processing: release everything.

A transition that fails (bad parameters, weights that do not load) logs the reason and
returns FAILURE: the node stays where it was, running, and can be fixed and retried. The
start-up parameters are writable while the node is unconfigured (configure reads them) and
refused, with the reason, in the other states; ``overlay_alpha`` changes at any time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Optional

from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from .process import SignalStop, startup_error_text
from .segment_node import NODE_NAME, SegmentationMixin, run

UNCONFIGURED, INACTIVE, ACTIVE, FINALIZED = "unconfigured", "inactive", "active", "finalized"


class SegmentLifecycleNode(SegmentationMixin, LifecycleNode):
    """The managed segmentation node. Construction only declares the parameters (and
    refuses bad ``-p`` values, as the plain node does); the model waits for configure."""

    MANAGED = True

    def __init__(self, command_line: Sequence[str] = (), **kwargs: Any):
        super().__init__(NODE_NAME, **kwargs)
        self._init_segmentation()
        self._managed_state = UNCONFIGURED
        try:
            self._declare_parameters(command_line)
        except BaseException:
            self._after_error("destroying the node", self.destroy_node)
            raise
        self.get_logger().info(f"unconfigured: configure loads the model (ros2 lifecycle set "
                               f"{self.get_fully_qualified_name()} configure)")

    def _lifecycle_state(self) -> Optional[str]:
        return self._managed_state

    # ------------------------------------------------------------------ transitions
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("configure", self._configure, INACTIVE, undo=self._cleanup)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("activate", self._activate, ACTIVE, undo=self._deactivate)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("deactivate", self._deactivate, INACTIVE)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("cleanup", self._cleanup, UNCONFIGURED)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("shutdown", self._release_all, FINALIZED)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """After an exception escaped a transition (rclpy's ERROR): release everything and
        go back to unconfigured, from where configure can be retried."""
        return self._transition("error recovery", self._release_all, UNCONFIGURED)

    def _transition(self, name: str, step: Callable[[], None], reached: str,
                    undo: Optional[Callable[[], None]] = None) -> TransitionCallbackReturn:
        """Run ``step``; SUCCESS and the new state, or FAILURE with the reason logged, what
        the step had done undone, and the state unchanged. Never raises."""
        try:
            step()
        except Exception as exc:
            reason = startup_error_text(exc)
            self.get_logger().error(f"{name} failed, staying {self._managed_state}: {reason}")
            if undo is not None:
                self._after_error(f"undoing the failed {name}", undo)
            return TransitionCallbackReturn.FAILURE
        self._managed_state = reached
        self.get_logger().info(f"{name}: now {reached}")
        return TransitionCallbackReturn.SUCCESS

    def _release_all(self) -> None:
        if self._managed_state == ACTIVE:
            self._deactivate()
        if self._managed_state in (ACTIVE, INACTIVE):
            self._cleanup()

    # ------------------------------------------------------------------ shutdown
    def destroy_node(self) -> None:
        """Stop the worker before the publishers it uses are destroyed; then the lifecycle
        state machine, which rclpy's LifecycleNode never destroys: it holds the node (and
        its transition_event publisher), so Fast DDS's shared-memory files outlived the
        process's context without this."""
        self._release()
        super().destroy_node()
        self._state_machine.destroy_when_not_in_use()



def run_managed(argv: list[str], stop: SignalStop) -> int:
    """``segment_node.run`` with the managed node."""
    return run(argv, stop, SegmentLifecycleNode)
