"""``eacnet bench-pipeline``: where the time of one camera frame goes in the node's path.

Times each stage the segmentation node runs per frame, on a sensor_msgs/Image built with
rosbags and sent through a CDR round trip, for several backend/precision configurations:

    decode       message -> BGR (codec.to_bgr)
    preprocess   resize, colour order, normalisation (Segmenter.preprocess)
    forward      the network (Segmenter.logits; CUDA synchronised), with the argmax where the
                 engine computes it in its graph (Segmenter.graph_ids: OpenVINO)
    postprocess  argmax + nearest resize to the input size (Segmenter.mask_from_logits), or
                 only the resize after an in-graph argmax (Segmenter.mask_from_ids)
    colour       colour mask and overlay (Segmenter.colorize / overlay)
    score        configurations ending in ``+conf``: the frame score (image cues + the
                 confidence's doubt, ``eacnet_core.infer.confidence.frame_score``); their forward
                 (OpenVINO: a second output of the graph) or postprocess (the softmax maximum
                 beside the argmax, the nearest resize of the confidence) include the confidence
    encode       three Image messages (codec; four with the confidence) + rosbags CDR
                 serialization, a stand-in for the serialization rclpy does when publishing

Configurations are timed interleaved, round by round, so drifts of a shared machine hit
each alike. Every configuration's mask is compared with the baseline's (fp32 eager torch
by default) on the same frame: a faster backend only counts if it gives the same answer.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np

from eacnet_core.infer.args import add_int8_calibration
from eacnet_core.infer.confidence import confidence_tensor, frame_score, ids_and_confidence
from eacnet_core.infer.segmenter import Segmenter, SegmenterOptions
from eacnet_core.models import MODELS
from eacnet_core.options import Alias, add_device, add_overwrite, add_resize, add_threads, at_least, parse_hw, wxh
from eacnet_core.outputs import check_outputs, write_json
from eacnet_core.runtime import sync

from ..node import codec
from ..node.pipeline import SegmentedFrame, encode_frame

STAGES = ("decode", "preprocess", "forward", "postprocess", "colour", "score", "encode")
#: The clock the stages are timed on (seconds); a module attribute so a test can put in a
#: clock it drives and check which stage each piece of work lands in.
clock: Callable[[], float] = time.perf_counter
#: A configuration label ending in this also makes the confidence and the frame score.
CONFIDENCE_SUFFIX = "+conf"
#: confidence + frame score, as a fraction of the forward pass: the target
CONFIDENCE_TARGET = 0.05
DEFAULT_SIZES = ("480x360", "1280x720")
DEFAULT_CONFIGS = ("torch:fp32", "torch:fp32:nchw", "onnxruntime:fp32")
NON_FORWARD_TARGET = 0.15  # everything but the forward pass, as a fraction of the forward pass
SPEEDUP_TARGET = 1.5
AGREEMENT_TARGET = 0.99
INT8_SPEEDUP_TARGET = 1.8  # end to end over the baseline; int8 changes masks, judged by mIoU


@dataclass(frozen=True)
class PipelineConfig:
    """'backend:precision[:nchw]'; torch runs channels-last unless ':nchw' is given."""

    backend: str
    precision: str
    channels_last: bool = True
    confidence: bool = False  # '+conf': also the confidence and the frame score

    @classmethod
    def parse(cls, text: str) -> PipelineConfig:
        if text.endswith(CONFIDENCE_SUFFIX):
            plain = cls.parse(text[:-len(CONFIDENCE_SUFFIX)])
            return cls(plain.backend, plain.precision, plain.channels_last, confidence=True)
        if text == "auto":  # the default path: backend and precision chosen as the node chooses them
            return cls("auto", "auto")
        parts = text.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("nchw", "nhwc")):
            raise ValueError(f"configuration {text!r} must look like backend:precision[:nchw|nhwc], "
                             "e.g. auto, torch:fp32, torch:fp32:nchw, onnxruntime:fp32, onnxruntime:int8, "
                             "openvino:bf16")
        return cls(parts[0], parts[1], len(parts) == 2 or parts[2] == "nhwc")

    @property
    def label(self) -> str:
        suffix = CONFIDENCE_SUFFIX if self.confidence else ""
        if (self.backend, self.precision) == ("auto", "auto"):
            return "auto" + suffix
        layout = "" if self.backend != "torch" else (":nhwc" if self.channels_last else ":nchw")
        return f"{self.backend}:{self.precision}{layout}{suffix}"


def running_label(config: PipelineConfig, segmenter: Segmenter) -> str:
    """The configuration's label; for a choice left to auto, also what it chose."""
    if "auto" not in (config.backend, config.precision):
        return config.label
    layout = (":nhwc" if segmenter.channels_last else ":nchw") if segmenter.backend == "torch" else ""
    return f"{config.label}={segmenter.backend}:{segmenter.precision}{layout}"


@dataclass
class StageTimes:
    """Median milliseconds per stage for one configuration and input size."""

    size: str
    config: str
    device: str
    ms: dict[str, float] = field(default_factory=dict)
    agreement: float = 1.0
    streamed_fps: Optional[float] = None  # the whole path back to back (streamed_fps), when measured

    @property
    def non_forward_ms(self) -> float:
        return sum(v for k, v in self.ms.items() if k != "forward")

    @property
    def total_ms(self) -> float:
        return sum(self.ms.values())


def parse_size(text: str) -> tuple[int, int]:
    """'1280x720' (W x H, as cameras are described) -> (720, 1280). A frame needs a size:
    parse_hw's "not set" ('0' or '') is an error here."""
    height, width = parse_hw(text, order="WxH")
    if not height:
        raise ValueError(f"expected a frame size as WxH (e.g. 1280x720), got {text!r}")
    return height, width


def synthetic_frame(height: int, width: int) -> np.ndarray:
    """A deterministic camera-like frame (sky-to-road gradient, shapes, mild noise): smooth
    regions and edges, so masks have both large areas and boundaries."""
    rows = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    image = (np.array([200, 170, 140], np.float32) * (1 - rows) + np.array([70, 80, 90], np.float32) * rows)
    image = np.broadcast_to(image, (height, width, 3)).copy()
    cv2.rectangle(image, (width // 8, height // 3), (width // 3, height * 3 // 4), (40, 60, 160), -1)
    cv2.circle(image, (width * 2 // 3, height // 2), max(2, height // 6), (30, 140, 60), -1)
    noise = np.random.default_rng(0).normal(0, 6, image.shape).astype(np.float32)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def message_types() -> tuple[Any, type]:
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    return store, store.types["sensor_msgs/msg/Image"]


def input_message(store: Any, image_type: type, bgr: np.ndarray) -> Any:
    """The frame as a bgr8 Image after a CDR round trip: the layout the node receives."""
    types = store.types
    header = types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=1, nanosec=0),
                                          frame_id="camera")
    msg = codec.array_to_image(image_type, header, bgr, "bgr8")
    return store.deserialize_cdr(store.serialize_cdr(msg, msg.__msgtype__), msg.__msgtype__)


def run_frame(segmenter: Segmenter, msg: Any, store: Any, image_type: type,
              alpha: float = 0.5, confidence: bool = False) -> tuple[dict[str, float], np.ndarray]:
    """One frame through the node's stages; (ms per stage, mask). ``confidence``: also the
    confidence and the frame score, as the node makes them with ``frame_score`` on."""
    marks = [clock()]
    bgr = codec.to_bgr(msg)
    marks.append(clock())
    if segmenter.frame_on_device:
        return _run_frame_on_device(segmenter, bgr, msg, store, image_type, alpha, marks, confidence)
    batch = segmenter.preprocess(bgr)
    marks.append(clock())
    size, sure = bgr.shape[:2], None
    in_graph = segmenter.graph_ids_confidence(batch) if confidence else None
    if in_graph is not None:  # OpenVINO: ids and confidence are the graph's two outputs
        (ids, sure), logits = in_graph, None
    else:
        ids = None if confidence else segmenter.graph_ids(batch)  # the argmax in the graph: forward includes it
        logits = segmenter.logits(batch) if ids is None else None
    sync(segmenter.device)
    marks.append(clock())
    if confidence and logits is not None:
        ids, sure = ids_and_confidence(logits, segmenter.temperature)
    mask = segmenter.mask_from_logits(logits, size) if ids is None else segmenter.mask_from_ids(ids, size)
    if sure is not None:
        sure = segmenter.mask_from_ids(sure, size)  # the same nearest resize as the mask
    marks.append(clock())
    colours = segmenter.colorize(mask)
    overlay = segmenter.overlay(bgr, mask, alpha, color_mask=colours)
    marks.append(clock())
    if sure is not None:
        frame_score(sure, bgr)
    marks.append(clock())
    for out in encode_frame(SegmentedFrame(mask, colours, overlay, sure), msg.header, image_type).values():
        store.serialize_cdr(out, out.__msgtype__)
    marks.append(clock())
    return {stage: (b - a) * 1000.0 for stage, a, b in zip(STAGES, marks[:-1], marks[1:], strict=True)}, mask


def _run_frame_on_device(segmenter: Segmenter, bgr: np.ndarray, msg: Any, store: Any, image_type: type,
                         alpha: float, marks: list[float], confidence: bool = False
                         ) -> tuple[dict[str, float], np.ndarray]:
    """The stages of a Segmenter whose frame is processed on its device (device_frame.py), the
    device synchronised after each so that each stage's time is its own: preprocess = upload +
    resize + normalisation, postprocess = argmax + nearest resize + the mask's copy back,
    colour = colour mask + overlay + their copy back. The node runs them without those
    synchronisations (``Segmenter.segment_frames``), so the sum is an upper bound."""
    import torch

    if segmenter.chooser.pending:  # backend=auto settles on the first frame, as in submit_frames
        segmenter.tune(*bgr.shape[:2])
    frames = segmenter._frames
    with torch.inference_mode():
        frame = frames.upload(bgr)
        batch = frames.network_input([frame], frames.network_size(bgr.shape[:2]))
        sync(segmenter.device)
        marks.append(clock())
        logits = segmenter.device_forward(batch)
        sync(segmenter.device)
        marks.append(clock())
        mask_t = frames.nearest(frames.argmax(logits)[0], bgr.shape[:2])
        mask = mask_t.cpu().numpy()
        sure = None
        if confidence:
            probability = torch.softmax(logits.float() / segmenter.temperature, 1).amax(1)[0]
            sure = frames.nearest(confidence_tensor(probability), bgr.shape[:2]).cpu().numpy()
        marks.append(clock())
        colours_t = frames.colorize(mask_t)
        colours = colours_t.cpu().numpy()
        overlay = frames.overlay(frame, colours_t, alpha).cpu().numpy()
        marks.append(clock())
    if sure is not None:
        frame_score(sure, bgr)
    marks.append(clock())
    for out in encode_frame(SegmentedFrame(mask, colours, overlay, sure), msg.header, image_type).values():
        store.serialize_cdr(out, out.__msgtype__)
    marks.append(clock())
    return {stage: (b - a) * 1000.0 for stage, a, b in zip(STAGES, marks[:-1], marks[1:], strict=True)}, mask


def streamed_fps(segmenter: Segmenter, msg: Any, store: Any, image_type: type, frames: int,
                 alpha: float = 0.5) -> float:
    """Frames per second of the node's whole path run back to back, with no timer between the
    stages: decode, ``Segmenter.submit_frames`` (mask, colour mask, overlay), encode + CDR.
    Each frame is submitted before the previous one is collected, so on a GPU its upload
    overlaps the previous forward pass (off the GPU, submit does all the work itself)."""
    def collect(pending: Any) -> None:
        r = pending.result()[0]
        for out in encode_frame(SegmentedFrame(r.mask, r.color_mask, r.overlay), msg.header, image_type).values():
            store.serialize_cdr(out, out.__msgtype__)

    start, pending = clock(), None
    for _ in range(frames):
        submitted = segmenter.submit_frames([codec.to_bgr(msg)], [(True, True)], alpha)
        if pending is not None:
            collect(pending)
        pending = submitted
    collect(pending)
    return frames / (clock() - start)


def build_segmenters(model: str, weights: Optional[str], configs: Sequence[PipelineConfig], device: str,
                     inference_hw: tuple[int, int], threads: int, calibration: str = "",
                     frame_on_device: str = "auto") -> list[Segmenter]:
    import torch

    segmenters = []
    for config in configs:
        torch.manual_seed(0)  # untrained weights: the same random init for every configuration
        options = SegmenterOptions(device=device, precision=config.precision, backend=config.backend,
                                   inference_height=inference_hw[0], inference_width=inference_hw[1],
                                   channels_last=config.channels_last, threads=threads, calibration_data=calibration,
                                   frame_on_device=frame_on_device)
        segmenters.append(Segmenter.from_name(model, weights, options, allow_untrained=True))
    return segmenters


#: Runs of one configuration in a row before the next one's (see bench_size).
BLOCK = 5


def bench_size(segmenters: Sequence[Segmenter], configs: Sequence[PipelineConfig], size_hw: tuple[int, int],
               runs: int, warmup: int, block: int = BLOCK, streamed: int = 0) -> list[StageTimes]:
    """Timing of every configuration at one input size, interleaved in blocks of ``block``
    runs (each block preceded by ``warmup`` untimed runs); index 0 is the baseline.

    Blocks rather than single runs: an engine's worker threads keep spinning for a while
    after its run (onnxruntime's and OpenMP's busy-wait), and on 2 cores that stole a third
    of the next engine's time when every run alternated (onnxruntime int8 after fp32: 24.6 ms
    against 20.0 ms alone). Alternating blocks still spreads machine drift over all of them."""
    store, image_type = message_types()
    frame = synthetic_frame(*size_hw)
    msg = input_message(store, image_type, frame)
    for segmenter in segmenters:  # auto chooses on its first frame, as in the node (untimed here)
        segmenter.settle(segmenter.preprocess(frame))
    samples: list[list[dict[str, float]]] = [[] for _ in configs]
    masks: list[Optional[np.ndarray]] = [None] * len(configs)
    while any(len(s) < runs for s in samples):
        for i, segmenter in enumerate(segmenters):
            count = min(block, runs - len(samples[i]))
            for run_index in range(warmup + count if count else 0):
                times, masks[i] = run_frame(segmenter, msg, store, image_type, confidence=configs[i].confidence)
                if run_index >= warmup:
                    samples[i].append(times)
    fps = [streamed_fps(s, msg, store, image_type, streamed) if streamed else None for s in segmenters]
    label = f"{size_hw[1]}x{size_hw[0]}"
    results = []
    for config, segmenter, runs_ms, mask, rate in zip(configs, segmenters, samples, masks, fps, strict=True):
        median = {s: float(np.median([r[s] for r in runs_ms])) for s in STAGES}
        results.append(StageTimes(label, running_label(config, segmenter), str(segmenter.device), median,
                                  float((mask == masks[0]).mean()), rate))
    return results


def format_table(results: Sequence[StageTimes]) -> str:
    head = ("| input | config | " + " | ".join(STAGES) + " | non-fwd | non-fwd/fwd | total | fps | "
            "fwd speed-up | mask agree |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    baselines = {r.size: r for r in results if r is next(x for x in results if x.size == r.size)}
    for r in results:
        base = baselines[r.size]
        cells = [r.size, r.config] + [f"{r.ms[s]:.1f}" for s in STAGES] + [
            f"{r.non_forward_ms:.1f}", f"{100 * r.non_forward_ms / r.ms['forward']:.1f}%", f"{r.total_ms:.1f}",
            f"{1000 / r.total_ms:.1f}", f"{base.ms['forward'] / r.ms['forward']:.2f}x", f"{100 * r.agreement:.2f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def check_targets(results: Sequence[StageTimes]) -> list[str]:
    """One line per target and input size, PASS or FAIL."""
    lines = []
    for size in dict.fromkeys(r.size for r in results):
        rows = [r for r in results if r.size == size]
        base = rows[0]
        worst = max(r.non_forward_ms / r.ms["forward"] for r in rows)
        lines.append(f"{'PASS' if worst <= NON_FORWARD_TARGET else 'FAIL'} {size}: non-forward stages <= "
                     f"{NON_FORWARD_TARGET:.0%} of forward (worst {worst:.1%})")
        good = [r for r in rows[1:] if r.agreement >= AGREEMENT_TARGET]
        best = min(good, key=lambda r: r.ms["forward"], default=None)
        if best is None:
            lines.append(f"FAIL {size}: no configuration besides the baseline agrees >= {AGREEMENT_TARGET:.0%}")
            continue
        speedup = base.ms["forward"] / best.ms["forward"]
        lines.append(f"{'PASS' if speedup >= SPEEDUP_TARGET else 'FAIL'} {size}: best {best.config} is "
                     f"{speedup:.2f}x faster than {base.config} (target {SPEEDUP_TARGET}x) with "
                     f"{best.agreement:.2%} of mask pixels equal")
    return lines + _int8_lines(results) + confidence_lines(results)


def confidence_lines(results: Sequence[StageTimes]) -> list[str]:
    """Each '+conf' row against the same configuration without it: the whole added time
    (every stage's difference) as a fraction of the plain row's forward pass."""
    lines = []
    for row in (r for r in results if CONFIDENCE_SUFFIX in r.config):
        plain = next((r for r in results if r.size == row.size
                      and r.config == row.config.replace(CONFIDENCE_SUFFIX, "")), None)
        if plain is None:
            continue
        added = row.total_ms - plain.total_ms
        share = added / plain.ms["forward"]
        by_stage = ", ".join(f"{s} {row.ms[s] - plain.ms[s]:+.2f}" for s in STAGES)
        lines.append(f"{'PASS' if share <= CONFIDENCE_TARGET else 'FAIL'} {row.size}: confidence + frame score on "
                     f"{plain.config} add {added:.2f} ms = {share:.1%} of its forward pass (target "
                     f"{CONFIDENCE_TARGET:.0%}); per stage ms: {by_stage}")
    return lines


def _int8_lines(results: Sequence[StageTimes]) -> list[str]:
    """int8 rows against the baseline, end to end (total ms); their masks differ from fp32 by
    design, so the agreement is reported, and accuracy is for `eacnet eval --precision int8`."""
    lines = []
    for size in dict.fromkeys(r.size for r in results):
        rows = [r for r in results if r.size == size]
        for row in (r for r in rows[1:] if ":int8" in r.config):
            speedup = rows[0].total_ms / row.total_ms
            lines.append(f"{'PASS' if speedup >= INT8_SPEEDUP_TARGET else 'FAIL'} {size}: {row.config} end to end "
                         f"is {speedup:.2f}x {rows[0].config} (target {INT8_SPEEDUP_TARGET}x); "
                         f"{row.agreement:.2%} of mask pixels equal to it")
    return lines


# ---------------------------------------------------------------------------- CLI

def add_parser(subparsers) -> None:
    p = subparsers.add_parser("bench-pipeline", help="time every stage of the ROS node's per-frame path",
                              description="Time decode, preprocess, forward, postprocess, colour/overlay and "
                                          "encode (+CDR) of the segmentation node for several backends and "
                                          "precisions; the first configuration is the baseline.")
    p.add_argument("--model", default="eacnet_erf", choices=tuple(MODELS), metavar="NAME",
                   help="registry model (default eacnet_erf)")
    p.add_argument("--weights", help="checkpoint (default: packaged weights, else random init; fine for timing)")
    p.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), help="input sizes WxH (default: %(default)s)")
    p.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS),
                   help="backend:precision[:nchw], or auto (the node's default path; the table names what it "
                        "chose) (default: %(default)s); the first is the baseline")
    add_device(p)
    add_resize(p, aliases=[Alias("--inference-size", wxh, "same WxH meaning here")], what="each input")
    p.add_argument("--runs", type=at_least(1), default=10, help="timed rounds (default 10)")
    p.add_argument("--warmup", type=at_least(0), default=2, help="untimed rounds first (default 2)")
    add_threads(p)
    add_int8_calibration(p)
    p.add_argument("--frame-on-device", default="auto", choices=("auto", "on", "off"),
                   help="pre/post-process the frame on the model's device (auto: on CUDA with a torch backend)")
    p.add_argument("--streamed", type=at_least(0), default=0, metavar="N",
                   help="also time N frames back to back through the whole path, no stage timers (fps)")
    p.add_argument("--confidence", action="store_true",
                   help="also time each configuration with the confidence and the frame score (its '+conf' twin; "
                        "or name such configurations, e.g. openvino:fp32+conf)")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    add_overwrite(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    configs = [PipelineConfig.parse(c) for c in args.configs]
    if getattr(args, "confidence", False):
        configs = [twin for c in configs for twin in (c, PipelineConfig(c.backend, c.precision, c.channels_last, True))
                   if not c.confidence] + [c for c in configs if c.confidence]
    sizes = [parse_size(s) for s in args.sizes]
    inference_hw = args.resize or (0, 0)
    if args.runs < 1 or args.warmup < 0 or args.streamed < 0:
        raise ValueError("--runs must be >= 1, --warmup and --streamed >= 0")
    if args.json:
        check_outputs([args.json], overwrite=args.overwrite)
    segmenters = build_segmenters(args.model, args.weights, configs, args.device, inference_hw, args.threads,
                                  args.int8_calibration or "", args.frame_on_device)
    for segmenter in segmenters:  # compiled backends compile here, at start-up, as the node does
        segmenter.warmup(*(inference_hw if inference_hw[0] else (None, None)))
    results = [r for size in sizes for r in bench_size(segmenters, configs, size, args.runs, args.warmup,
                                                       streamed=args.streamed)]
    print(f"model {args.model}, device {segmenters[0].device}, {args.runs} runs (median ms), baseline "
          f"{configs[0].label}; inference at "
          f"{'input size' if not inference_hw[0] else f'{inference_hw[1]}x{inference_hw[0]}'}")
    print(format_table(results))
    for r in results:
        if r.streamed_fps is not None:
            print(f"{r.size} {r.config}: {r.streamed_fps:.1f} frames/s streamed (whole path, back to back)")
    for line in check_targets(results):
        print(line)
    if args.json:
        rows = [{**asdict(r), "non_forward_ms": r.non_forward_ms, "total_ms": r.total_ms} for r in results]
        write_json(args.json, rows)
    return 0
