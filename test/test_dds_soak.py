"""eacnet_ros.bench.soak (``eacnet bench-dds --rate HZ --duration S``): a tiny open-loop run
against segment_node in its own process (skipped without ROS 2) checked for the report's
structure and counts, and the pieces that need no ROS. No duration is compared."""

from __future__ import annotations

import argparse
import json
import random

import pytest

from eacnet_ros.bench import dds as db
from eacnet_ros.bench import soak

RATE, DURATION = 10, 2


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="eacnet")
    db.add_parser(parser.add_subparsers(), soak=soak.run)
    return parser.parse_args(["bench-dds", *argv])


def test_tiny_open_loop_soak_reports_windows_losses_and_the_process(tmp_path, capsys, monkeypatch):
    for module in ("rclpy", "sensor_msgs.msg", "diagnostic_msgs.msg"):
        pytest.importorskip(module)
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    monkeypatch.setenv("ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 232)))
    out = tmp_path / "soak.json"
    args = parse(["--backbone", "dabnet", "--attention", "none", "--backend", "torch", "--threads", "1",
                  "--sizes", "64x48", "--transports", "raw", "--rate", str(RATE), "--duration", str(DURATION),
                  "--window", "1", "--sample-every", "0.25", "--json", str(out)])
    assert args.func(args) == 0
    report = json.loads(out.read_text())
    sent = RATE * DURATION
    assert report["sent"] == sent and report["size"] == "64x48" and report["transport"] == "raw"
    assert [(w["window"], w["sent"]) for w in report["windows"]] == [(0, RATE), (1, RATE)]
    assert sum(w["masks"] for w in report["windows"]) == report["masks"] > 0
    assert set(report["lost"]) == {"before_node", "keep_last", "decode", "failed", "mask_not_back"}
    assert report["masks"] + sum(report["lost"].values()) == sent  # every frame accounted for once
    assert report["lost"]["decode"] == report["lost"]["failed"] == 0
    lat = report["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert report["process"] and all(s["rss_mb"] > 0 and s["fds"] > 0 and s["threads"] > 0
                                     for s in report["process"])
    assert report["rss_slope_mb_per_min"] is not None and report["rss_growth_pct"] is not None
    assert set(report["output_counts"]) == {"color_mask", "overlay"}
    assert report["sigterm_exit_code"] == 0
    printed = capsys.readouterr().out
    assert all({"node_p50", "node_p99"} <= set(w) for w in report["windows"])  # from its /diagnostics
    assert "| window | from s | sent | masks |" in printed and "SIGTERM exit code 0" in printed


def test_windows_follow_the_schedule_and_lost_frames_have_no_latency():
    node = [(0.2, 5.0, 8.0), (0.7, 7.0, 9.0), (1.1, 6.0, 7.0), (2.5, float("nan"), float("nan"))]
    rows = soak.window_stats([0.0, 0.5, 1.0, 1.5, 2.0], [10.0, None, 30.0, 20.0, None], window_s=1.0, node=node)
    assert [(r["sent"], r["masks"], r["max"]) for r in rows] == [(2, 1, 10.0), (2, 2, 30.0), (1, 0, None)]
    assert rows[1]["p50"] == pytest.approx(25.0)
    assert [(r["node_p50"], r["node_p99"]) for r in rows] == [(6.0, 9.0), (6.0, 7.0), (None, None)]


def test_rss_trend_fits_after_the_first_window():
    samples = [soak.ProcessSample(t, 500.0 + (100.0 if t < 60 else t / 60.0), 10, 20) for t in range(0, 301, 30)]
    slope, growth = soak.rss_trend(samples, after_s=60.0)
    assert slope == pytest.approx(1.0) and growth == pytest.approx(100.0 * 4 / 501.0)
    assert soak.rss_trend(samples[:3], after_s=60.0) == (None, None)


def test_lost_by_cause_splits_what_never_came_back():
    node = {"frames_received": 95, "frames_processed": 90, "frames_dropped": 3, "frames_bad": 1, "frames_failed": 1}
    lost = soak.lost_by_cause(100, 88, node)
    assert lost == {"before_node": 5, "keep_last": 3, "decode": 1, "failed": 1, "mask_not_back": 2}
    assert 88 + sum(lost.values()) == 100


def test_duration_needs_a_rate():
    args = parse(["--duration", "5"])
    with pytest.raises(ValueError, match="--rate"):
        args.func(args)
