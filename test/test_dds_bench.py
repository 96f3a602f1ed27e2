"""eacnet_ros.bench.dds: a tiny real run through Fast DDS against segment_node in its own
process (skipped without ROS 2), plus the pieces that need no ROS: reading the node's
execution path from its log line and argument checks.

The tiny run proves the loop works and its numbers are sane, not the 5% target: at 160x120
the forward pass is ~10 ms, where scheduling noise on a shared CPU is as large."""

from __future__ import annotations

import argparse
import json
import logging
import random

import numpy as np
import pytest

from eacnet_core.infer.segmenter import Segmenter, SegmenterOptions
from eacnet_ros.bench import dds as db

FRAMES = 3


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="eacnet")
    db.add_parser(parser.add_subparsers())
    return parser.parse_args(["bench-dds", *argv])


@pytest.fixture
def private_ros_domain(monkeypatch):
    """Nothing may leave this machine, nor meet another test's nodes."""
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    monkeypatch.setenv("ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 232)))


def test_tiny_run_through_dds(tmp_path, capsys, private_ros_domain):
    for module in ("rclpy", "sensor_msgs.msg", "diagnostic_msgs.msg"):
        pytest.importorskip(module)
    out = tmp_path / "dds.json"
    args = parse(["--backbone", "dabnet", "--attention", "none", "--backend", "torch", "--threads", "1",
                  "--sizes", "160x120", "--frames", str(FRAMES), "--warmup", "1", "--json", str(out)])
    assert args.func(args) == 0
    rows = json.loads(out.read_text())
    assert [(r["size"], r["transport"]) for r in rows] == [("160x120", "raw"), ("160x120", "compressed")]
    for row in rows:
        assert row["sent"] == row["received"] == FRAMES and row["dropped"] == 0  # closed loop: nothing queues
        assert row["node_dropped"] == 0 and row["node_received"] == FRAMES  # the node's own /diagnostics agree
        assert 0 < row["latency_ms"]["p50"] <= row["latency_ms"]["p90"] <= row["latency_ms"]["p99"]
        # the in-process reference holds the forward pass (per sample, so in the medians too); closed
        # loop runs the frames one after another, so its rate is one frame per mean round trip.
        # (How the round trip compares with the forward pass is the bench's figure, not a check:
        # the two are measured apart, and a shared CPU moves either.)
        assert 0 < row["forward_ms"] <= row["in_process_ms"]
        assert row["fps"] == pytest.approx(1000 / row["latency_ms"]["mean"])
        assert row["runtime"] == "torch:nhwc fp32 on cpu"
    printed = capsys.readouterr().out
    assert "| 160x120 | raw | torch:nhwc fp32 on cpu | closed loop | 3 | 3 | 0 | 0 |" in printed
    assert "everything but the forward pass <= 5% of it end to end" in printed


@pytest.mark.parametrize("backend, channels_last", [("torch", True), ("torch", False), ("onnxruntime", False)])
def test_node_runtime_is_read_from_the_loaded_line(backend, channels_last):
    segmenter = Segmenter.from_name("dabnet", options=SegmenterOptions(device="cpu", backend=backend,
                                                                       channels_last=channels_last))
    line = f"[INFO] [1700000000.1] [eacnet.segment_node]: loaded {segmenter.describe()}\n"
    runtime = db.NodeRuntime.parse(line)
    assert runtime == db.NodeRuntime("dabnet", "cpu", "fp32", backend, channels_last)
    assert runtime.pipeline_config.label == ("torch:fp32:" + ("nhwc" if channels_last else "nchw")
                                             if backend == "torch" else "onnxruntime:fp32")
    assert db.NodeRuntime.parse("[INFO] listening on /image") is None


def test_backend_auto_is_read_from_the_choice_on_the_first_frame(caplog):
    """backend=auto: the 'loaded' line says auto; the choice comes with the first frame."""
    segmenter = Segmenter.from_name("dabnet", options=SegmenterOptions(device="cpu", backend="auto"))
    segmenter.warmup()  # no size known: the choice waits for the first frame
    runtime = db.NodeRuntime.parse(f"loaded {segmenter.describe()}")
    assert runtime.backend == "auto"
    with caplog.at_level(logging.INFO, logger="eacnet_core"):
        segmenter.segment(np.zeros((48, 64, 3), np.uint8))
    chosen = [r for r in map(runtime.chosen, caplog.messages) if r is not None]
    assert len(chosen) == 1 and chosen[0].backend == segmenter.backend
    assert chosen[0].channels_last == segmenter.channels_last and chosen[0].model == "dabnet"
    assert runtime.chosen(f"loaded {segmenter.describe()}") is None


@pytest.mark.parametrize("argv, match", [(["--frames", "0"], "argument --frames: must be an integer >= 1, got '0'"),
                                         (["--warmup", "0"], "argument --warmup: must be an integer >= 1, got '0'"),
                                         (["--rate", "-1"], "argument --rate: must be a number >= 0, got '-1'")])
def test_bad_numbers_are_refused_by_the_parser(argv, match, capsys):
    with pytest.raises(SystemExit):
        parse(argv)
    assert match in capsys.readouterr().err


@pytest.mark.parametrize("argv, match", [(["--sizes", "0"], "WxH"),
                                         (["--backbone", "dabnet", "--attention", "nonlocal"], "no model")])
def test_bad_arguments_fail_before_anything_starts(argv, match):
    args = parse(argv)
    with pytest.raises(ValueError, match=match):
        args.func(args)


def test_table_and_targets():
    result = db.DdsResult(size="480x360", transport="raw", mode="closed loop", sent=30, received=29,
                          latency_ms={"p50": 103.0, "p90": 110.0, "p99": 120.0, "mean": 104.0}, fps=9.5,
                          forward_ms=100.0, in_process_ms=101.0, node_dropped=0, node_received=30,
                          runtime="onnxruntime fp32 on cpu")
    assert result.dropped == 1 and result.overhead == pytest.approx(0.03)
    assert "| 480x360 | raw | onnxruntime fp32 on cpu | closed loop | 30 | 29 | 1 | 0 | 103.0 |" in \
        db.format_table([result])
    assert db.check_targets([result])[0].startswith("PASS 480x360 raw") and "(3.0%" in db.check_targets([result])[0]
    result.latency_ms["p50"] = 106.0
    assert db.check_targets([result])[0].startswith("FAIL")


def test_discovery_wait_names_what_is_missing():
    """wait_matched ends at once when all is discovered, and otherwise names the missing piece."""
    from types import SimpleNamespace

    from eacnet_ros.bench.dds import DdsClient

    reliable, best_effort = "RELIABLE", "BEST_EFFORT"
    subscribers, publishers, reliability = [0], [0], [best_effort]
    client = SimpleNamespace(
        _reliable=reliable,
        publisher=SimpleNamespace(topic_name="/ns/image", get_subscription_count=lambda: subscribers[0]),
        mask_subscription=SimpleNamespace(topic_name="/ns/mask", get_publisher_count=lambda: publishers[0]),
        node=SimpleNamespace(get_subscriptions_info_by_topic=lambda topic: [
            SimpleNamespace(qos_profile=SimpleNamespace(reliability=reliability[0]))]))
    client._unmatched = lambda want_reliable: DdsClient._unmatched(client, want_reliable)
    steps = (("subscription to /ns/image was not discovered", 0, 0), ("publisher of /ns/mask was not discovered", 1, 0),
             ("subscription to /ns/image did not turn reliable", 1, 1))
    for expected, subscribers[0], publishers[0] in steps:
        with pytest.raises(ChildProcessError, match=expected):
            DdsClient.wait_matched(client, reliable=True, timeout=0.0)
    DdsClient.wait_matched(client, reliable=False, timeout=0.0)  # best effort is enough without reliable
    reliability[0] = reliable
    DdsClient.wait_matched(client, reliable=True, timeout=0.0)
