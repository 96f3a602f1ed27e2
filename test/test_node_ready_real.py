"""Ready means ready: with backend auto, segment_node chooses its engine before it listens,
and a new frame size is measured in the background while frames keep flowing (on the real
ROS 2 middleware, in this process; see ros_harness.py and eacnet_ros/node/choice.py).

The choice is slowed down by a fake whose delay (5 s, 50 frames at 10 Hz) dwarfs any noise
on the frame path: had the node waited for it, it would lose a run of frames that long. No
duration is compared with another.
"""

from __future__ import annotations

import threading
import time

import pytest
import ros_harness as h  # skips this module without rclpy

from eacnet_core.infer.segmenter import Segmenter

pytestmark = pytest.mark.filterwarnings("ignore:Deprecated in favor of:DeprecationWarning")

CHOICE_DELAY_S = 5.0  # what the slowed choice adds, at start-up and in the background
RATE_HZ = 10.0
CAMERA_HW = (64, 96)  # the camera_height x camera_width parameters: the start-up choice's size
NEW_HW = (48, 64)  # the camera switches to this size later
OLD_FRAMES, NEW_FRAMES = 10, 110  # 1 s at the camera size, then 11 s at the new one
#: A run of lost frames this long (1.5 s) means the node waited for something; the slowed
#: choice alone would cost 50.
LONGEST_LOSS = 15
#: backend auto with fp32: torch (two layouts), onnxruntime and OpenVINO are timed.
PARAMS = {**h.SMALL_MODEL, "backend": "auto", "precision": "fp32", "camera_height": CAMERA_HW[0],
          "camera_width": CAMERA_HW[1]}


class SlowChoice:
    """Records each engine choice (start-up ``tune``, background ``chosen_copy``) with its
    size, thread and time, after sleeping ``CHOICE_DELAY_S``; the real choice runs after."""

    def __init__(self, monkeypatch):
        self.events: list[dict] = []
        tune, chosen_copy = Segmenter.tune, Segmenter.chosen_copy

        def slow_tune(segmenter, height, width):
            return self._slowed("start-up", (height, width), lambda: tune(segmenter, height, width))

        def slow_copy(segmenter, bgr):
            return self._slowed("background", bgr.shape[:2], lambda: chosen_copy(segmenter, bgr))

        monkeypatch.setattr(Segmenter, "tune", slow_tune)
        monkeypatch.setattr(Segmenter, "chosen_copy", slow_copy)

    def _slowed(self, kind, size, choose):
        event = {"kind": kind, "size": tuple(size), "thread": threading.current_thread().name,
                 "started": time.monotonic()}
        self.events.append(event)
        time.sleep(CHOICE_DELAY_S)
        result = choose()
        event["ended"] = time.monotonic()
        return result


def longest_run(flags: list[bool]) -> int:
    """Length of the longest run of False in ``flags``."""
    longest = run = 0
    for ok in flags:
        run = 0 if ok else run + 1
        longest = max(longest, run)
    return longest


def test_open_loop_frames_after_listening_are_not_lost_to_the_engine_choice(monkeypatch):
    slow = SlowChoice(monkeypatch)
    subscribed_at: list[float] = []
    module = h.segment_node_module()
    subscribe = module.SegmentationMixin._subscribe
    monkeypatch.setattr(module.SegmentationMixin, "_subscribe",
                        lambda node, *args: subscribed_at.append(time.monotonic()) or subscribe(node, *args))
    with h.closed_without_leftovers(lambda: h.Session("ready_probe")) as session:
        node = session.start("ready", **PARAMS)  # returns once the node has said "listening on"
        # the start-up choice: at the camera size parameter, before the subscription existed
        assert [(e["kind"], e["size"]) for e in slow.events] == [("start-up", CAMERA_HW)]
        assert slow.events[0]["ended"] <= min(subscribed_at)
        segmenter = node.node.segmenter
        assert segmenter.autotune_size == CAMERA_HW and "chosen by auto" in segmenter.describe()

        probe = session.probe
        mask_sub, masks = probe.subscribe(h.Image, node.topic("mask"))
        pub = probe.publisher(h.Image, node.topic("image"))
        with h.endpoints(probe, mask_sub, pub):
            probe.wait_matched(pub, [mask_sub])
            probe.wait_input_reliability(node.topic("image"), node.namespace, h.ReliabilityPolicy.RELIABLE)
            sent = []
            start = time.monotonic()
            for i in range(OLD_FRAMES + NEW_FRAMES):  # open loop: never waits for a mask
                time.sleep(max(0.0, start + i / RATE_HZ - time.monotonic()))
                msg = h.raw_image(*(CAMERA_HW if i < OLD_FRAMES else NEW_HW))
                pub.publish(msg)
                sent.append(msg)
            last = sent[-1]
            assert masks.wait_for(lambda m: h.same_stamp(m.header, last.header), h.OUTPUT_TIMEOUT_S) is not None
            choice = node.node.processor.choice
            h.wait_until(lambda: not choice.measuring or choice.adopted, 60.0, "the background choice to end")
            # adopted between two frames: one more frame takes it over if the last came before it ended
            if not choice.adopted:
                pub.publish(h.raw_image(*NEW_HW))
                h.wait_until(lambda: choice.adopted, 30.0, "the worker to adopt the choice")

    stamps = {(m.header.stamp.sec, m.header.stamp.nanosec) for m in masks.messages}
    masked = [(s.header.stamp.sec, s.header.stamp.nanosec) in stamps for s in sent]
    background = [e for e in slow.events if e["kind"] == "background"]
    assert [(e["size"], e["thread"]) for e in background] == [(NEW_HW, "eacnet-engine-choice")]
    during = [t for t, _ in masks.items if background[0]["started"] <= t <= background[0]["ended"]]
    assert during, "no mask was published while the new size's engine was being chosen"
    assert longest_run(masked) < LONGEST_LOSS, f"{masked.count(False)} of {len(sent)} frames lost: {masked}"
    assert choice.adopted == 1 and segmenter.autotune_size == NEW_HW
