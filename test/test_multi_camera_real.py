"""Several cameras, one model, on the real ROS 2 middleware (see ros_harness.py).

``SegmentNode(cameras=[...])`` runs in a context of its own, spun by a SingleThreadedExecutor
in a thread; a probe node in another context publishes each camera's frames on
``<namespace>/<camera>/image`` and reads ``<camera>/mask``, ``color_mask``, ``overlay`` and
``/diagnostics`` through real topics only. The model is the cheapest one (dabnet without
attention, torch, one thread, CPU).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import ros_harness as h  # skips this module without rclpy
from ros_harness import RunningNode, endpoints

pytestmark = pytest.mark.filterwarnings("ignore:Deprecated in favor of:DeprecationWarning")


@pytest.fixture(scope="module")
def session():
    with h.closed_without_leftovers(lambda: h.Session("multi_probe")) as created:
        yield created


def _camera_endpoints(probe: h.Probe, node: RunningNode, camera: str, outputs=("mask",)) -> tuple[Any, dict]:
    """A reliable publisher on the camera's input and inboxes on its outputs."""
    pub = probe.publisher(h.Image, node.topic(f"{camera}/image"))
    inboxes = {name: probe.subscribe(h.Image, node.topic(f"{camera}/{name}")) for name in outputs}
    probe.wait_matched(pub, [sub for sub, _ in inboxes.values()])
    return pub, inboxes


def test_two_cameras_each_get_their_outputs_with_their_own_header_and_size(session):
    probe = session.probe
    sizes = {"front": (48, 64), "left": (60, 80)}
    with session.node("two", cameras=["front", "left"]) as node:
        wired = {camera: _camera_endpoints(probe, node, camera, ("mask", "color_mask", "overlay"))
                 for camera in sizes}
        entities = [e for pub, inboxes in wired.values() for e in (pub, *(s for s, _ in inboxes.values()))]
        with endpoints(probe, *entities):
            for camera, (height, width) in sizes.items():
                pub, inboxes = wired[camera]
                sent, mask = probe.send_until_output(
                    pub, lambda c=camera, s=(height, width): h.raw_image(*s, frame_id=f"{c}_optical"),
                    inboxes["mask"][1])
                assert h.same_stamp(mask.header, sent.header) and mask.header.frame_id == f"{camera}_optical"
                assert (mask.encoding, mask.height, mask.width) == ("mono8", height, width)
                for name in ("color_mask", "overlay"):
                    out = inboxes[name][1].wait_for(lambda m, s=sent: h.same_stamp(m.header, s.header),
                                                    h.OUTPUT_TIMEOUT_S)
                    assert out is not None, f"{camera}: no {name}"
                    assert (out.encoding, out.height, out.width, out.header.frame_id) == (
                        "bgr8", height, width, f"{camera}_optical")
            for camera, (_, inboxes) in wired.items():  # nothing crossed over to the other camera
                assert all(m.header.frame_id == f"{camera}_optical" for m in inboxes["mask"][1].messages)
        assert probe.node.count_publishers(node.topic("mask")) == 0  # no single-camera topics


def test_four_cameras_one_model_with_per_camera_diagnostics_and_a_total(session, monkeypatch):
    probe = session.probe
    cameras = ["cam0", "cam1", "cam2", "cam3"]
    loads = []
    node_module = h.segment_node_module()
    load = node_module.load_segmenter
    monkeypatch.setattr(node_module, "load_segmenter", lambda *args, **kwargs: loads.append(1) or load(*args, **kwargs))
    with session.node("four", cameras=cameras) as node:
        assert len(loads) == 1, "the model must be loaded once for all cameras"
        wired = {camera: _camera_endpoints(probe, node, camera) for camera in cameras}
        entities = [e for pub, inboxes in wired.values() for e in (pub, inboxes["mask"][0])]
        with endpoints(probe, *entities):
            for camera in cameras:
                pub, inboxes = wired[camera]
                sent, mask = probe.send_until_output(
                    pub, lambda c=camera: h.raw_image(36, 48, frame_id=c), inboxes["mask"][1])
                assert mask.header.frame_id == camera and (mask.height, mask.width) == (36, 48)
            since = time.monotonic()
            h.wait_until(lambda: len(_statuses(probe, node, since)) >= 5, h.DIAGNOSTICS_TIMEOUT_S,
                         "a diagnostics array")
            statuses = _statuses(probe, node, since)
            fqn = node.fqn
    by_name = {status.name: h.diag_values(status) for status in statuses}
    total = by_name[f"{fqn}: segmentation"]
    assert total["cameras"] == ", ".join(cameras) and int(total["frames_processed"]) >= 4
    for camera in cameras:
        values = by_name[f"{fqn}: segmentation {camera}"]
        assert values["camera"] == camera and int(values["frames_processed"]) >= 1
        assert {"fps", "latency_ms_p50", "latency_ms_p90", "frames_dropped"} <= set(values)
    assert sum(int(by_name[f"{fqn}: segmentation {c}"]["frames_processed"]) for c in cameras) == int(
        total["frames_processed"])


def _statuses(probe: h.Probe, node: RunningNode, since: float) -> list[Any]:
    """The statuses of the newest DiagnosticArray from ``node`` received after ``since``."""
    arrays = [a for a in probe.diagnostics.since(since) if a.status and a.status[0].name.startswith(node.fqn)]
    return list(arrays[-1].status) if arrays else []


#: Slower than a 30 Hz camera's frame interval on any machine, so that camera alone keeps the
#: worker busy.
SLOW_PASS_S = 0.06


@pytest.mark.parametrize("batch", ["never", "always"])
def test_a_camera_at_1_hz_is_not_starved_by_one_at_30_hz(session, batch):
    """The 30 Hz camera alone keeps the single worker busy (its frames are dropped); each
    1 Hz frame must still be served, before its next one."""
    probe = session.probe
    with session.node(f"fair_{batch}", cameras=["fast", "slow"], batch_cameras=batch) as node:
        node.node.processor.segmenter = h.Slowed(node.node.processor.segmenter, SLOW_PASS_S)
        (fast, fast_in), (slow, slow_in) = (_camera_endpoints(probe, node, c) for c in ("fast", "slow"))
        with endpoints(probe, fast, slow, fast_in["mask"][0], slow_in["mask"][0]):
            for pub, inboxes in ((fast, fast_in), (slow, slow_in)):
                probe.send_until_output(pub, lambda: h.raw_image(120, 160), inboxes["mask"][1])
            slow_sent, fast_sent = [], []
            start = time.monotonic()
            for i in range(150):  # 5 s at 30 Hz; the slow camera once a second
                msg = h.raw_image(120, 160, frame_id="fast")
                fast_sent.append(msg)
                fast.publish(msg)
                if i % 30 == 15:
                    slow_msg = h.raw_image(120, 160, frame_id="slow")
                    slow_sent.append(slow_msg)
                    slow.publish(slow_msg)
                time.sleep(max(0.0, start + (i + 1) / 30.0 - time.monotonic()))
            last = slow_sent[-1]
            assert slow_in["mask"][1].wait_for(lambda m: h.same_stamp(m.header, last.header), h.OUTPUT_TIMEOUT_S)
            status = probe.wait_diagnostics(f"{node.fqn}: segmentation fast", since=time.monotonic())
    served = [s for s in slow_sent if slow_in["mask"][1].find(lambda m, s=s: h.same_stamp(m.header, s.header))]
    fast_served = [s for s in fast_sent if fast_in["mask"][1].find(lambda m, s=s: h.same_stamp(m.header, s.header))]
    assert len(served) == len(slow_sent) == 5, f"{len(served)} of the slow camera's 5 frames got a mask"
    assert len(fast_served) >= 5, f"only {len(fast_served)} of the fast camera's frames got a mask"
    assert int(h.diag_values(status)["frames_dropped"]) > 0, "the 30 Hz camera never saturated the worker"
