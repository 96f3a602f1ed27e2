"""The command line's face of a Segmenter, shared by ``segment``, ``bag-eval`` and ``demo``:
which model (``--weights`` / ``--model`` / ``--allow-untrained``), how it runs (``--device``,
``--precision``, ``--backend``, ``--resize``, ``--threads``, ``--int8-calibration``), and the
Segmenter those arguments name. One home, so the commands cannot drift apart and the bag
tools need not borrow it from another command's module."""

from __future__ import annotations

import argparse

from eacnet_core.data.roots import CAMVID_LOOKUP
from eacnet_core.infer.segmenter import BACKENDS, Segmenter, SegmenterOptions
from eacnet_core.models import MODELS
from eacnet_core.options import INFERENCE_SIZE_HXW, add_device, add_resize, add_threads
from eacnet_core.runtime import PRECISIONS


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--weights CKPT | --model NAME (its packaged weights), and --allow-untrained."""
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--weights", help="checkpoint written by `eacnet train`")
    which.add_argument("--model", choices=tuple(MODELS), metavar="NAME",
                       help=f"registry model, run with its packaged weights: {', '.join(MODELS)}")
    parser.add_argument("--allow-untrained", action="store_true",
                        help="with --model and no packaged weights: run a randomly initialised model (noise)")


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """--device/--precision/--backend/--resize/--threads, shared by every command that runs a Segmenter."""
    add_device(parser)
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="auto: fp16 on CUDA; on the CPU the fastest of fp32, bf16 and int8 (measured) whose "
                             "masks agree with fp32 on >= 99%% of pixels; int8: a quantised model on the CPU")
    add_int8_calibration(parser)
    parser.add_argument("--backend", default="auto", choices=BACKENDS,
                        help="torch, torch_compiled (torch.compile; + CUDA graphs on CUDA), onnxruntime or openvino "
                             "(default auto: the fastest, measured)")
    add_resize(parser, aliases=[INFERENCE_SIZE_HXW])
    add_threads(parser)


def options_from_args(args: argparse.Namespace) -> SegmenterOptions:
    height, width = args.resize or (0, 0)
    return SegmenterOptions(device=args.device, precision=args.precision, backend=args.backend,
                            inference_height=height, inference_width=width, threads=args.threads,
                            calibration_data=args.int8_calibration or "")


def add_int8_calibration(parser: argparse.ArgumentParser,
                         default: str = CAMVID_LOOKUP) -> None:
    """``--int8-calibration``; ``default`` says where the command looks without it."""
    parser.add_argument("--int8-calibration", metavar="DIR",
                        help="--precision int8: CamVid folder (its train split) or folder of camera frames that "
                             f"calibrates the quantisation (default {default}); read only when the int8 model is "
                             "not cached yet. With --precision auto, giving it lets auto build and time int8 models")


def segmenter_from_args(args: argparse.Namespace) -> Segmenter:
    """The Segmenter of ``add_model_arguments`` and ``add_runtime_arguments``."""
    options = options_from_args(args)
    if args.weights:
        return Segmenter.from_checkpoint(args.weights, options)
    return Segmenter.from_name(args.model, options=options, allow_untrained=args.allow_untrained)
