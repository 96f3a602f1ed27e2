"""The managed node (segment_lifecycle_node) on the real ROS 2 middleware (see ros_harness.py).

One ``SegmentLifecycleNode`` runs in a context of its own, spun by a SingleThreadedExecutor
in a thread; a probe node in another context drives it through its real lifecycle services
(``change_state``, ``get_state``), sets parameters through the real parameter services and
watches topics, /rosout and the graph. The tests run in order through one life: a configure
that fails (missing weights) and is retried after fixing the parameter, activate, deactivate,
activate again, cleanup, shutdown.
"""

from __future__ import annotations

import gc
import time
import weakref
from typing import Any

import pytest
import ros_harness as h  # skips this module without rclpy
from ros_harness import RunningNode, endpoints

pytestmark = pytest.mark.filterwarnings("ignore:Deprecated in favor of:DeprecationWarning")


@pytest.fixture(scope="module")
def managed():
    """The lifecycle node (unconfigured) and the probe; torn down at the module's end."""
    h.segment_node_module()  # bound to the real rclpy, not test_segment_node.py's double
    from eacnet_ros.node.segment_lifecycle_node import SegmentLifecycleNode

    with h.no_shm_leftovers():
        nodes, probe = h.RosContext(), h.Probe("lifecycle_probe")
        try:
            namespace = h.unique_namespace("managed")
            overrides = [h.Parameter(k, value=v) for k, v in {**h.SMALL_MODEL, "inference_height": 48,
                                                             "inference_width": 64}.items()]
            node = SegmentLifecycleNode(context=nodes.context, namespace=namespace, parameter_overrides=overrides)
            yield RunningNode(namespace, node, nodes.spin(node)), probe
        finally:
            probe.close()
            nodes.close()


def _log_lines(probe: h.Probe, node: RunningNode, since: float, text: str) -> list[Any]:
    label = node.namespace.strip("/")
    return [m for m in probe.rosout.since(since) if label in m.name and text in m.msg]


def _subscribed(probe: h.Probe, node: RunningNode) -> int:
    return len([i for i in probe.node.get_subscriptions_info_by_topic(node.topic("image"))
                if i.node_name == "segment_node" and i.node_namespace == node.namespace])


def test_it_starts_unconfigured_without_a_model_or_topics(managed):
    node, probe = managed
    assert probe.lifecycle_state(node.fqn) == "unconfigured"
    assert node.node.segmenter is None
    assert probe.node.count_publishers(node.topic("mask")) == 0 and _subscribed(probe, node) == 0


def test_every_parameter_has_a_value_over_the_parameter_services(managed):
    """What ``ros2 param dump`` asks: list, then get all at once; one parameter without a
    value (``cameras`` declared by type only) made rclpy answer nothing for the whole request."""
    from eacnet_ros.node.params import PARAMETERS

    node, probe = managed
    names = [spec.name for spec in PARAMETERS]
    values = dict(zip(names, probe.get_parameters(node.fqn, *names), strict=True))
    expected = {spec.name: spec.default for spec in PARAMETERS}
    expected.update({k: v for k, v in h.SMALL_MODEL.items()}, inference_height=48, inference_width=64)
    assert values == expected
    assert values["cameras"] == [] and isinstance(values["overlay_alpha"], float)


def test_an_integer_overlay_alpha_is_stored_as_a_float(managed):
    node, probe = managed
    (result,) = probe.set_parameters(node.fqn, overlay_alpha=1)
    assert result.successful, result.reason
    assert probe.get_parameters(node.fqn, "overlay_alpha") == [1.0]
    assert isinstance(probe.get_parameters(node.fqn, "overlay_alpha")[0], float)
    (result,) = probe.set_parameters(node.fqn, overlay_alpha=2)
    assert not result.successful and "overlay_alpha" in result.reason
    (result,) = probe.set_parameters(node.fqn, overlay_alpha=0.5)
    assert result.successful, result.reason


def test_a_configure_that_fails_reports_why_and_is_retried_after_fixing_the_parameter(managed, tmp_path):
    node, probe = managed
    missing = str(tmp_path / "missing.pt")
    (result,) = probe.set_parameters(node.fqn, weights=missing)
    assert result.successful, result.reason  # start-up parameters change while unconfigured
    start = time.monotonic()
    assert probe.change_state(node.fqn, "configure") is False
    assert probe.lifecycle_state(node.fqn) == "unconfigured"
    log = probe.rosout.wait_for(lambda m: node.namespace.strip("/") in m.name and "configure failed" in m.msg,
                                h.OUTPUT_TIMEOUT_S, since=start)
    assert log is not None and h.level(log) >= 40 and "missing.pt" in log.msg, log
    assert node.node.segmenter is None and probe.node.count_publishers(node.topic("mask")) == 0

    (result,) = probe.set_parameters(node.fqn, weights="")  # the packaged default
    assert result.successful, result.reason
    assert probe.change_state(node.fqn, "configure") is True
    assert probe.lifecycle_state(node.fqn) == "inactive"
    assert node.node.segmenter is not None and node.node.segmenter.model_name == "dabnet"
    h.wait_until(lambda: probe.node.count_publishers(node.topic("mask")) > 0, h.DISCOVERY_TIMEOUT_S,
                 "the mask publisher after configure")
    assert _subscribed(probe, node) == 0, "inactive: no subscription yet"


def test_start_up_parameters_are_refused_once_configured_with_the_reason(managed):
    node, probe = managed
    (result,) = probe.set_parameters(node.fqn, backbone="erfnet")
    assert not result.successful and "cleanup first" in result.reason
    assert probe.get_parameters(node.fqn, "backbone") == ["dabnet"]
    (result,) = probe.set_parameters(node.fqn, overlay_alpha=0.25)
    assert result.successful, result.reason


def test_an_invalid_transition_fails_and_changes_nothing(managed):
    node, probe = managed
    assert probe.change_state(node.fqn, "deactivate") is False  # inactive: not active
    assert probe.lifecycle_state(node.fqn) == "inactive"


def test_activate_subscribes_and_publishes_with_diagnostics(managed):
    node, probe = managed
    start = time.monotonic()
    assert probe.change_state(node.fqn, "activate") is True
    assert probe.lifecycle_state(node.fqn) == "active"
    _round_trip(probe, node)
    probe.wait_diagnostics(node.fqn, since=start)
    assert _log_lines(probe, node, start, "listening on "), "no ready line on activate"


def _round_trip(probe: h.Probe, node: RunningNode) -> None:
    mask_sub, masks = probe.subscribe(h.Image, node.topic("mask"))
    pub = probe.publisher(h.Image, node.topic("image"))
    with endpoints(probe, mask_sub, pub):
        probe.wait_matched(pub, [mask_sub])
        sent, mask = probe.send_until_output(pub, lambda: h.raw_image(60, 80), masks)
    assert h.same_stamp(mask.header, sent.header) and (mask.height, mask.width) == (60, 80)


def test_deactivate_stops_subscribing_and_leaves_the_cpu_idle(managed):
    node, probe = managed
    worker = node.node._worker
    assert worker is not None and worker._thread.is_alive()
    assert probe.change_state(node.fqn, "deactivate") is True
    assert probe.lifecycle_state(node.fqn) == "inactive"
    assert not worker._thread.is_alive(), "the worker thread still runs"
    h.wait_until(lambda: _subscribed(probe, node) == 0, h.DISCOVERY_TIMEOUT_S, "the image subscription to go")
    mask_sub, masks = probe.subscribe(h.Image, node.topic("mask"))
    pub = probe.publisher(h.Image, node.topic("image"))
    with endpoints(probe, mask_sub, pub):
        start = time.monotonic()
        for _ in range(5):
            pub.publish(h.raw_image(60, 80))
            time.sleep(0.3)
        time.sleep(1.0)
    assert masks.messages == [] and probe.node_diagnostics(node.fqn, since=start + 1.0) == []
    cpu = time.process_time()
    time.sleep(1.0)
    assert time.process_time() - cpu < 0.5, "this process kept a core busy while the node was inactive"


def test_activate_again_resumes(managed):
    node, probe = managed
    assert probe.change_state(node.fqn, "activate") is True
    _round_trip(probe, node)


def test_cleanup_frees_the_model_and_the_publishers(managed):
    node, probe = managed
    assert probe.change_state(node.fqn, "deactivate") is True
    model = weakref.ref(node.node.segmenter)
    assert probe.change_state(node.fqn, "cleanup") is True
    assert probe.lifecycle_state(node.fqn) == "unconfigured"
    gc.collect()
    assert model() is None, "something still holds the model after cleanup"
    h.wait_until(lambda: probe.node.count_publishers(node.topic("mask")) == 0, h.DISCOVERY_TIMEOUT_S,
                 "the mask publisher to go")
    (result,) = probe.set_parameters(node.fqn, backbone="dabnet")  # writable again
    assert result.successful, result.reason


def test_shutdown_finalizes(managed):
    node, probe = managed
    assert probe.change_state(node.fqn, "shutdown") is True
    assert probe.lifecycle_state(node.fqn) == "finalized"


def test_a_failing_teardown_step_is_a_warning_and_the_next_steps_still_run():
    module = h.segment_node_module()
    done: list[str] = []

    class Failing:
        def __init__(self, name: str):
            self.name = name

        def shutdown(self, timeout_sec: float) -> None:
            raise RuntimeError(f"{self.name} is stuck")

        def destroy_node(self) -> None:
            done.append("node")

        def try_shutdown(self) -> None:
            raise RuntimeError("context already gone")

    warnings: list[str] = []
    module._teardown(Failing("node"), Failing("executor"), Failing("context"), warn=warnings.append)
    assert done == ["node"]
    assert warnings == ["teardown: shutting the executor down failed: RuntimeError: executor is stuck",
                        "teardown: shutting the ROS context down failed: RuntimeError: context already gone"]
