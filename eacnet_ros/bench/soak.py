"""``eacnet bench-dds --rate HZ --duration S``: the node under long open-loop load.

A closed loop (bench-dds's default) sends the next frame when the last mask is back: it
shows the latency without queueing, and nothing of what a camera does to a node for hours.
This mode plays a camera: frames on a fixed schedule from the moment the node says
"listening on" (no warm-up frame: what start-up costs shows in the first window), whatever
the node does, with the colour mask and the overlay subscribed as rviz would (``--outputs``).
It reports:

* latency publish -> mask, p50/p90/p99/max, per window (``--window``, default a minute) by
  each frame's scheduled send time, beside the node's own latency (its subscription callback
  to its publish, from its /diagnostics): what is left is transport and this process;
* every frame lost, by cause: never reached the node (the middleware), overwritten in the
  node's keep-last input while another frame was in work (``frames_dropped``: by design,
  zero while the rate is under the node's capacity), not decodable (``frames_bad``), failed
  in the pipeline (``frames_failed``), or processed but its mask never arrived here;
* the node's resident memory, open file descriptors and threads, sampled from ``/proc``
  every ``--sample-every`` seconds, and the slope of its RSS after the first window (MB per
  minute), with its growth over the run after that window;
* the node's exit code on SIGTERM at the end (what a launch system or systemd sends).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import math
import os
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from eacnet_core.outputs import write_json

from ..bags.eval import latency_percentiles
from . import dds
from .pipeline import parse_size

NODE_STOP_TIMEOUT_S = 60.0
QUIET_S = 3.0  # no mask for this long after the last frame: the run is over
COUNTERS = ("frames_received", "frames_processed", "frames_dropped", "frames_bad", "frames_failed")


@dataclass(frozen=True)
class ProcessSample:
    """One look at the node's process: seconds since the first frame, RSS, fds, threads."""

    t_s: float
    rss_mb: float
    fds: int
    threads: int


def sample_process(pid: int, t_s: float) -> Optional[ProcessSample]:
    """The process's RSS (VmRSS), open file descriptors and threads now; None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError):
        return None
    return ProcessSample(t_s, int(fields["VmRSS"].split()[0]) / 1024.0, fds, int(fields["Threads"]))


class ProcessSampler:
    """``sample_process`` every ``period_s`` on a thread of its own."""

    def __init__(self, pid: int, period_s: float, start: float):
        self.samples: list[ProcessSample] = []
        self._pid, self._period, self._start = pid, period_s, start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="eacnet-soak-sampler", daemon=True)

    def __enter__(self) -> ProcessSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        while True:
            sample = sample_process(self._pid, time.perf_counter() - self._start)
            if sample is not None:
                self.samples.append(sample)
            if self._stop.wait(self._period):
                return


@dataclass
class SoakResult:
    size: str
    transport: str
    rate_hz: float
    duration_s: float
    window_s: float
    outputs: list[str]
    runtime: str
    sent: int
    masks: int
    lost: dict[str, int]
    latency_ms: dict[str, Optional[float]]
    windows: list[dict[str, Any]]
    process: list[dict[str, float]]
    rss_slope_mb_per_min: Optional[float]
    rss_growth_pct: Optional[float]
    output_counts: dict[str, int] = field(default_factory=dict)
    sigterm_exit_code: Optional[int] = None

    def to_json(self) -> dict:
        return asdict(self)


def window_stats(scheduled_s: Sequence[float], latencies_ms: Sequence[Optional[float]], window_s: float,
                 node: Sequence[tuple[float, float, float]] = ()) -> list[dict[str, Any]]:
    """Per window of scheduled send time: frames sent, masks back, latency percentiles and
    max (ms) of the masks back. ``latencies_ms[i]``: frame i's, None when it was lost.
    ``node``: (seconds, p50, p99) of the node's own latency (its callback to its publish, over
    its last 10 s) from each /diagnostics message: the window's median p50 and highest p99
    (``node_p50``, ``node_p99``) tell the node's share of the tail from the transport's and
    this process's."""
    count = max(1, math.ceil((max(scheduled_s, default=0.0) + 1e-9) / window_s))
    rows = []
    for w in range(count):
        inside = [lat for t, lat in zip(scheduled_s, latencies_ms, strict=True)
                  if w * window_s <= t < (w + 1) * window_s]
        got = [lat for lat in inside if lat is not None]
        reports = [(p50, p99) for t, p50, p99 in node if w * window_s <= t < (w + 1) * window_s
                   and not math.isnan(p50)]
        rows.append({"window": w, "start_s": w * window_s, "sent": len(inside), "masks": len(got),
                     **latency_percentiles(got), "max": max(got, default=None),
                     "node_p50": float(np.median([r[0] for r in reports])) if reports else None,
                     "node_p99": max((r[1] for r in reports), default=None)})
    return rows


def rss_trend(samples: Sequence[ProcessSample], after_s: float) -> tuple[Optional[float], Optional[float]]:
    """(slope of RSS in MB per minute, RSS growth in % from the first to the last sample) over
    the samples from ``after_s`` on; (None, None) with fewer than two."""
    late = [s for s in samples if s.t_s >= after_s]
    if len(late) < 2 or late[-1].t_s == late[0].t_s:
        return None, None
    t_min = np.array([s.t_s / 60.0 for s in late])
    rss = np.array([s.rss_mb for s in late])
    slope = float(np.polyfit(t_min, rss, 1)[0])
    return slope, 100.0 * (rss[-1] - rss[0]) / rss[0]


def lost_by_cause(sent: int, masks: int, node: dict[str, int]) -> dict[str, int]:
    """Frames lost, by where: before the node, in its keep-last input, decode, pipeline, back."""
    return {"before_node": sent - node["frames_received"], "keep_last": node["frames_dropped"],
            "decode": node["frames_bad"], "failed": node["frames_failed"],
            "mask_not_back": node["frames_processed"] - masks}


def terminate(node: Any, timeout: float = NODE_STOP_TIMEOUT_S) -> Optional[int]:
    """SIGTERM to the node process; its exit code (None if it had to be killed)."""
    proc = node._proc
    if proc is None or proc.poll() is not None:
        return proc.returncode if proc is not None else None
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except Exception:
        proc.kill()
        proc.wait()
        return None


def soak(args: argparse.Namespace, threads: int, frames: Sequence[np.ndarray]) -> SoakResult:
    """One node, one size and transport (the first of each given), ``args.duration`` seconds."""
    size_hw, transport = parse_size(args.sizes[0]), args.transports[0]
    size = f"{size_hw[1]}x{size_hw[0]}"
    namespace = f"/eacnet_bench_soak_{os.getpid()}_{transport}_{size}"
    count = max(1, int(round(args.duration * args.rate)))
    with dds.DdsClient(namespace, transport) as client, \
            dds.NodeProcess(dds.node_params(args, transport, threads, size_hw), namespace) as node:
        outputs = client.subscribe_outputs(args.outputs)
        node_latency = client.record_node_latency()
        client.wait_matched(reliable=args.reliability != "best_effort")
        messages = client.messages(dds.resized(frames, size_hw))
        gc.freeze()  # this process is the measuring end: no full collection of its imports mid-run
        start = time.perf_counter()
        keys = []
        with ProcessSampler(node.pid, args.sample_every, start) as sampler:
            for i, msg in enumerate(itertools.islice(itertools.cycle(messages), count)):
                time.sleep(max(0.0, start + i / args.rate - time.perf_counter()))
                keys.append(client.publish(msg))
            client.wait_quiet(QUIET_S)
            counters = client.diagnostics_after(time.perf_counter(), timeout=10.0) or {}
        runtime = node.runtime().label
        exit_code = terminate(node)
    node_counts = {k: int(counters.get(k, 0)) for k in COUNTERS}
    latencies = client.latencies_or_none(keys)
    masks = sum(lat is not None for lat in latencies)
    slope, growth = rss_trend(sampler.samples, args.window)
    return SoakResult(size=size, transport=transport, rate_hz=args.rate, duration_s=args.duration,
                      window_s=args.window, outputs=list(args.outputs), runtime=runtime, sent=len(keys), masks=masks,
                      lost=lost_by_cause(len(keys), masks, node_counts),
                      latency_ms={**latency_percentiles([x for x in latencies if x is not None]),
                                  "max": max((x for x in latencies if x is not None), default=None)},
                      windows=window_stats([i / args.rate for i in range(len(keys))], latencies, args.window,
                                           [(t - start, p50, p99) for t, p50, p99 in node_latency]),
                      process=[asdict(s) for s in sampler.samples], rss_slope_mb_per_min=slope,
                      rss_growth_pct=growth, output_counts={k: len(v) for k, v in outputs.items()},
                      sigterm_exit_code=exit_code)


def _ms(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def format_report(r: SoakResult) -> str:
    lines = [f"soak: {r.size} {r.transport}, {r.rate_hz:g} Hz open loop for {r.duration_s:g} s, outputs mask"
             + "".join(f" + {o}" for o in r.outputs) + f", node path {r.runtime}",
             "| window | from s | sent | masks | p50 ms | p90 | p99 | max | node p50 | node p99 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for w in r.windows:
        lines.append(f"| {w['window']} | {w['start_s']:g} | {w['sent']} | {w['masks']} | {_ms(w['p50'])} | "
                     f"{_ms(w['p90'])} | {_ms(w['p99'])} | {_ms(w['max'])} | {_ms(w['node_p50'])} | "
                     f"{_ms(w['node_p99'])} |")
    lat = r.latency_ms
    lines.append(f"all: {r.masks} masks of {r.sent} frames; p50 {_ms(lat['p50'])} ms, p90 {_ms(lat['p90'])}, "
                 f"p99 {_ms(lat['p99'])}, max {_ms(lat['max'])}")
    lines.append("lost: " + ", ".join(f"{k} {v}" for k, v in r.lost.items()))
    if r.process:
        first, last = r.process[0], r.process[-1]
        lines.append(f"node process: RSS {first['rss_mb']:.1f} -> {last['rss_mb']:.1f} MB "
                     f"(max {max(s['rss_mb'] for s in r.process):.1f}), fds {first['fds']} -> {last['fds']}, "
                     f"threads {first['threads']} -> {last['threads']}; {len(r.process)} samples")
    slope = "n/a" if r.rss_slope_mb_per_min is None else f"{r.rss_slope_mb_per_min:+.3f} MB/min"
    growth = "n/a" if r.rss_growth_pct is None else f"{r.rss_growth_pct:+.2f}%"
    lines.append(f"RSS after the first {r.window_s:g} s: slope {slope}, growth {growth}")
    lines.append(f"outputs received: {r.output_counts}; SIGTERM exit code {r.sigterm_exit_code}")
    return "\n".join(lines)


def run(args: argparse.Namespace, threads: int, frames: Sequence[np.ndarray]) -> int:
    result = soak(args, threads, frames)
    print(format_report(result))
    if args.json:
        write_json(Path(args.json), result.to_json())
    return 0
