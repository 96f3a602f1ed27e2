"""``eacnet train``'s command line: every option of ``TrainConfig``, one model (``--model``)
or several trained together on the same batches (``--models a,b``, each in ``--out/<model>``)."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

from eacnet_core.data.datasets import DATASET_KINDS
from eacnet_core.data.roots import DATA_ROOT_HELP
from eacnet_core.models import MODELS
from eacnet_core.options import Alias, add_device, add_option, add_threads, hxw, wxh
from eacnet_core.train.config import AMP_DTYPES, COMPILE_MODES, OPTIMIZERS, RECIPES, TrainConfig
from eacnet_core.train.init_from import packaged_sources
from eacnet_core.train.loop import NonFiniteLoss, train
from eacnet_core.train.loop import __doc__ as TRAIN_DOC
from eacnet_core.train.losses import LOSSES, WEIGHTINGS
from eacnet_core.train.run_files import BEST
from eacnet_core.train.together import train_together


def _scales(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--scales takes comma-separated numbers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"--scales must be positive numbers, got {text!r}")
    return values


def add_parser(subparsers) -> None:
    d = TrainConfig()
    p = subparsers.add_parser("train", help="train a model (single process or torchrun DDP)",
                              description=TRAIN_DOC, formatter_class=argparse.RawDescriptionHelpFormatter,
                              argument_default=argparse.SUPPRESS)
    a = p.add_argument
    a("--model", choices=tuple(MODELS), help="registry model to train (required unless --resume or --models)")
    a("--models", type=_models, help="several models trained together in one process on the same batches, "
                                     "comma-separated (e.g. eacnet_dab,dabnet: an equal-budget pair); each "
                                     "writes its run into --out/<model>")
    a("--dataset", choices=DATASET_KINDS, help=f"default {d.dataset}")
    a("--data-root", help=DATA_ROOT_HELP)
    a("--out", required=True, help="run folder: last.pt, best.pt, metrics.jsonl, tensorboard/")
    a("--init-from", help="checkpoint whose weights initialise the model (e.g. an erfnet_enc run's best.pt), or "
                          f"a packaged model ({', '.join(packaged_sources())}); with another class count the "
                          "class-sized tensors start fresh (or from --class-map) and the rest loads")
    a("--class-map", help="YAML 'new class: [old classes]' (e.g. vehicle: [Car]): with --init-from, a new class's "
                          "rows start as the mean of its old classes' rows instead of fresh")
    a("--recipe", choices=tuple(RECIPES), help="a named set of defaults for the options not given: "
                                               + "; ".join(r.describe() for r in RECIPES.values()).replace("%", "%%"))
    a("--head-lr-mult", type=float, help="lr of the tensors --init-from did not load as trained (the new "
                                         f"classes' head) as a multiple of --lr (default {d.head_lr_mult:g})")
    a("--train-split", help="split to train on (default train; camvid: trainval = train + val, the paper's "
                            "protocol for test-set models)")
    a("--val-split", help=f"split to validate on (default {d.val_split})")
    a("--resume", action="store_true", default=False, help="continue the run in --out from its last.pt")
    a("--epochs", type=int, help=f"default {d.epochs}")
    a("--batch-size", type=int, help=f"per process, default {d.batch_size}")
    add_option(p, "--crop-size", dest="crop", type=wxh, metavar="WxH",
               aliases=[Alias("--crop", hxw, "--crop was HxW; --crop-size is WxH: --crop 360x480 is "
                                             "--crop-size 480x360")],
               help="training crop WxH (default camvid 480x360, cityscapes 1024x512, folder 512x512)")
    a("--scales", type=_scales, help="random scales, comma-separated (default the paper's 0.75,...,2.0)")
    a("--no-flip", dest="flip", action="store_false", help="no random horizontal flip")
    a("--lr", type=float, help="initial learning rate (default adam 5e-4, sgd 4.5e-2)")
    a("--optimizer", choices=OPTIMIZERS, help=f"default {d.optimizer}")
    a("--attention-lr-mult", type=float, help="learning rate of the attention's parameters (gamma, q/k/v) "
                                              f"as a multiple of --lr (default {d.attention_lr_mult:g})")
    a("--attention-weight-decay", type=float, help="weight decay of the attention's parameters "
                                                   "(default: --weight-decay)")
    a("--momentum", type=float, help=f"SGD momentum, default {d.momentum}")
    a("--weight-decay", type=float, help=f"default {d.weight_decay:g}")
    a("--poly-power", type=float, help=f"poly decay power, default {d.poly_power}")
    a("--warmup-iters", type=int, help="linear warm-up iterations (default 0)")
    a("--warmup-ratio", type=float, help="lr factor at the start of the warm-up (default 1/3)")
    a("--loss", choices=LOSSES, help=f"default {d.loss}")
    a("--ohem-thresh", type=float, help=f"OHEM probability threshold, default {d.ohem_thresh}")
    a("--ohem-min-kept", type=int, help="OHEM minimum kept pixels per batch (default batch*crop pixels/16)")
    a("--class-weights", choices=WEIGHTINGS, help="weighting for --loss weighted-ce (default enet)")
    a("--class-weight-c", type=float, help=f"ENet constant c in 1/ln(c+p), default {d.class_weight_c}")
    a("--val-every", type=int, help="validate every N epochs (default 1; 0 = never)")
    add_option(p, "--val-resize", dest="val_size", type=wxh, metavar="WxH",
               aliases=[Alias("--val-size", hxw, "--val-size was HxW; --val-resize is WxH")],
               help="resize validation images to this size WxH for the network (default: their own size)")
    a("--val-batch-size", type=int, help=f"default {d.val_batch_size}")
    a("--limit", type=int, help="use only the first N images of each split (smoke runs)")
    a("--workers", type=int, help=f"DataLoader workers per process, default {d.workers}")
    a("--cache", action="store_true", help="decode the training images once into memory (small datasets)")
    a("--data-on-device", action="store_true", help="hold the training set on the device and augment it there "
                                                    "(GPU training of small datasets; implies --cache)")
    a("--seed", type=int, help=f"default {d.seed}")
    add_device(p, argparse.SUPPRESS, "; under torchrun cuda:LOCAL_RANK")
    a("--amp", action="store_true", help="mixed precision (autocast; GradScaler for fp16)")
    a("--amp-dtype", choices=AMP_DTYPES, help="auto = fp16 on CUDA, bf16 on CPU")
    add_threads(p, argparse.SUPPRESS)
    a("--sync-bn", action="store_true", help="SyncBatchNorm across processes (CUDA DDP)")
    a("--pool", type=int, help="EAC key/value pooling of eacnet_erf/eacnet_dab (default 2)")
    a("--channels-last", action="store_true", help="NHWC memory format")
    a("--compile", nargs="?", const="auto", choices=COMPILE_MODES[1:],
      help="torch.compile the training step (forward, loss, backward); 'auto' (the default when given "
           "without a mode) = reduce-overhead (CUDA graphs) on CUDA, torch.compile's default on CPU")
    a("--ema", type=float, help="decay of an exponential moving average of the weights (e.g. 0.999); the "
                                "average is what is validated and saved as the checkpoints' weights; 0 = off")
    a("--attention-gamma-init", type=float, help="start value of the attention's residual scale gamma "
                                                 "(default 0, the paper's)")
    a("--no-tensorboard", dest="tensorboard", action="store_false", help="no TensorBoard logs")
    a("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig defaults overlaid with the options actually given."""
    known = TrainConfig.__dataclass_fields__
    given = {k: v for k, v in vars(args).items() if k in known}
    if given.get("recipe"):
        given = RECIPES[given["recipe"]].overlay(given)
    return TrainConfig(**given)


def _models(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in MODELS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"--models takes comma-separated models of {', '.join(MODELS)}; "
                                         f"unknown: {', '.join(unknown) or '(none given)'}")
    return names


def configs_from_args(args: argparse.Namespace) -> list[TrainConfig]:
    """One config per model: ``--model``'s alone, or ``--models``' each in ``--out/<model>``."""
    cfg = config_from_args(args)
    models = getattr(args, "models", ())
    if models and cfg.model:
        raise ValueError("give --model or --models, not both")
    if models:
        return [replace(cfg, model=m, out=str(Path(cfg.out) / m)) for m in models]
    if not args.resume and not cfg.model:
        raise ValueError("--model is required (or --resume to continue a run)")
    return [cfg]


def run(args: argparse.Namespace) -> int:
    cfgs = configs_from_args(args)
    try:
        if len(cfgs) == 1 and not getattr(args, "models", ()):
            results = [train(cfgs[0], resume=args.resume)]
        else:
            results = train_together(cfgs, resume=args.resume)
    except NonFiniteLoss as exc:
        print(f"eacnet train: {exc}", file=sys.stderr)
        return 1
    stopped = [r.stopped_by_signal for r in results if r.stopped_by_signal]
    if stopped:
        return 128 + stopped[0]
    for result in results:
        if result.best_miou >= 0 and int(os.environ.get("RANK", "0")) == 0:
            print(f"done: best val mIoU {100 * result.best_miou:.2f}% -> {result.out / BEST}")
    return 0
