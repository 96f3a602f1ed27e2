"""ONNX export (torch's exporter) and onnxruntime sessions, with an equivalence check."""

from __future__ import annotations

import argparse
import io
import os
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from eacnet_core.checkpoint import load_checkpoint, model_from_checkpoint, weights_for
from eacnet_core.models import MODELS, build_model
from eacnet_core.options import (
    add_height_width_aliases,
    add_out,
    add_overwrite,
    add_threads,
    at_least,
    size_from_height_width,
    wxh,
)
from eacnet_core.outputs import check_outputs, write_bytes
from eacnet_core.runtime import configure_torch

#: Names of the image's (and logits') height and width axes in a ``dynamic_size`` export.
SIZE_AXES = ("height", "width")


def export_onnx(model: nn.Module, path: str | os.PathLike, height: int, width: int,
                dynamic_batch: bool = False, opset: int = 17, dynamic_size: bool = False) -> Path:
    """Write ``model`` as ONNX with input ``image`` (B, 3, H, W) and output ``logits``.

    Uses the TorchScript-based exporter: it handles the whole model family (including the
    blocked attention loop) in about a second, where the dynamo exporter took far longer.
    ``dynamic_size`` names H and W (``SIZE_AXES``) instead of fixing them. Tracing still
    freezes Python branches on the size: export at a size no stride divides (e.g. odd) so the
    input padding stays in the graph, and check other sizes (the Segmenter does both)."""
    path = Path(path)
    model = model.eval()
    dummy = torch.zeros(1, 3, height, width, device=next(model.parameters()).device)
    axes: dict[int, str] = {0: "batch"} if dynamic_batch else {}
    if dynamic_size:
        axes.update({2: SIZE_AXES[0], 3: SIZE_AXES[1]})
    graph = io.BytesIO()  # in memory, then one atomic write: never half a graph under the real name
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic are expected
        torch.onnx.export(model, (dummy,), graph, input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": axes, "logits": axes} if axes else None, opset_version=opset,
                          dynamo=False)
    return write_bytes(path, graph.getvalue())


def ort_session(path: str | os.PathLike | bytes, device: torch.device | str = "cpu", threads: int = 0,
                size: Optional[tuple[int, int]] = None):
    """An onnxruntime session on CPU, or on the CUDA provider when asked and present.

    ``path`` is an .onnx file or its bytes. ``size`` (height, width) fixes a ``dynamic_size``
    graph's H and W for this session, so onnxruntime optimises for a static shape again."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads > 0:
        options.intra_op_num_threads = threads
    # No busy-waiting between runs: onnxruntime's workers otherwise spin after each frame and
    # take a core from the rest of the frame's path (and from other nodes on a robot). In
    # `eacnet demo` on 2 cores, eacnet_erf fp32 went from 122 to 69 ms per frame; alone, a
    # forward pass costs 3-6% more (34.7 -> 36.9 ms).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if size is not None:
        for name, value in zip(SIZE_AXES, size, strict=True):
            options.add_free_dimension_override_by_name(name, value)
    providers = ["CPUExecutionProvider"]
    if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": torch.device(device).index or 0}))
    return ort.InferenceSession(path if isinstance(path, bytes) else str(path), options, providers=providers)


def compare_with_torch(model: nn.Module, path: str | os.PathLike, height: int, width: int,
                       batch: int = 1, seed: int = 0) -> dict:
    """Run both on the same random input: max |logit difference| and argmax agreement."""
    x = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        ref = model.eval().cpu()(x).numpy()
    out = ort_session(path).run(None, {"image": x.numpy()})[0]
    return {"max_abs_diff": float(np.abs(out - ref).max()),
            "argmax_agreement": float((out.argmax(1) == ref.argmax(1)).mean())}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a model to ONNX and check it against PyTorch",
                              description="Export a registry model (random or trained weights) to ONNX, then "
                                          "run it with onnxruntime and compare with PyTorch.")
    p.add_argument("--model", choices=tuple(MODELS), metavar="NAME",
                   help="registry model (default: the one the --weights checkpoint names)")
    p.add_argument("--weights", help="checkpoint to export (default: packaged weights, else random init)")
    p.add_argument("--classes", type=at_least(1), default=None, help="number of classes without weights (default 19)")
    p.add_argument("--size", type=wxh, metavar="WxH", help="input size WxH, e.g. 480x360 (required)")
    add_height_width_aliases(p)
    add_out(p, "output .onnx path", required=True)
    add_overwrite(p)
    add_threads(p)
    p.add_argument("--dynamic-batch", action="store_true", help="make the batch dimension dynamic")
    p.add_argument("--opset", type=at_least(7), default=17, help="ONNX opset (default 17)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.model and not args.weights:
        raise SystemExit("eacnet export: give --model NAME or --weights CKPT")
    size = size_from_height_width(args, default=None)
    if size is None or 0 in size:
        raise ValueError("--size WxH is required (the input size of the graph, e.g. 480x360)")
    height, width = size
    # --classes without --weights asks for a fresh model of that size: no packaged weights then
    weights = weights_for(args.model, args.weights) if args.weights or args.classes is None else None
    check_outputs([args.out], inputs=[weights] if weights else [], overwrite=args.overwrite)
    configure_torch(torch.device("cpu"), args.threads)
    if weights:
        ckpt = load_checkpoint(weights, expect_model=args.model, expect_classes=args.classes)
        model, name = model_from_checkpoint(ckpt, weights), ckpt["model"]
    else:
        model, name = build_model(args.model, args.classes or 19), args.model
    path = export_onnx(model, args.out, height, width, args.dynamic_batch, args.opset)
    check = compare_with_torch(model, path, height, width)
    print(f"wrote {path} ({name}, {'trained' if weights else 'random'} weights, {width}x{height}); "
          f"onnxruntime vs torch: max |diff| {check['max_abs_diff']:.2e}, "
          f"argmax agreement {100 * check['argmax_agreement']:.3f}%")
    return 0
