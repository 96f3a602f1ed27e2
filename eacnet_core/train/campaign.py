"""The long CamVid schedule, carried across interrupted GPU windows and CPU days.

The schedule is fixed in advance (``RECIPE``: the model cards' recipe for 1,000 epochs on
trainval) and trained pair by pair (``PAIRS``: each EACNet beside its equal-budget
control, on the same batches). Its state lives in a folder kept in the repository,
``campaign/<model>/state.pt`` + ``metrics.jsonl``, so whichever machine runs next
continues where the last one stopped:

- ``state.pt`` is a resumable ``last.pt`` made compact: fp32 weights, Adam's moments in
  bf16 (a third of fp32 weights + fp32 moments; bf16 keeps fp32's exponent range, so
  the second moment of tiny gradients does not flush to zero as in fp16), the schedule,
  RNG states and position (epoch and iteration) unchanged;
- ``eacnet campaign run`` checks the states out into a work folder as ``last.pt``,
  trains them together (``train_together``) for a wall-clock budget, stops at a step
  boundary, and writes the states back;
- ``eacnet campaign adopt RUN`` takes an ``eacnet train`` run of the recipe (its
  ``last.pt`` and ``metrics.jsonl``) into the folder, so no epoch it trained is lost.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import time
from pathlib import Path
from typing import Optional

import torch

from eacnet_core.checkpoint import CheckpointError, load_checkpoint, save_atomic
from eacnet_core.options import add_threads, at_least, number_in
from eacnet_core.runtime import resolve_device
from eacnet_core.train.config import COMPILE_MODES, TrainConfig
from eacnet_core.train.loop import NonFiniteLoss, Trainer
from eacnet_core.train.run_files import LAST, LOG
from eacnet_core.train.together import train_together

STATE = "state.pt"
#: The schedule every campaign model follows (eacnet_core/weights/eacnet_dab_camvid.md's recipe, 1,000 epochs).
RECIPE = dict(dataset="camvid", train_split="trainval", epochs=1000, batch_size=16, crop=(360, 480), lr=1e-3,
              optimizer="adam", weight_decay=2e-4, warmup_iters=200, poly_power=0.9, attention_lr_mult=10.0,
              attention_weight_decay=0.0, loss="weighted-ce", class_weights="enet", class_weight_c=1.10,
              channels_last=True, seed=0, val_every=0)
#: Autocast per device kind, a machine setting like the thread count, not part of the schedule:
#: bf16 on CUDA; fp32 on the CPU, where bf16 autocast sent dabnet's loss to NaN in epoch 3 of
#: the schedule from scratch (twice, from two resumes), and fp32 from the same state did not.
PRECISION_BY_DEVICE = {"cuda": "bf16", "cpu": "fp32"}
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
#: Equal-budget pairs, in the order the campaign trains them.
PAIRS = (("eacnet_dab", "dabnet"), ("eacnet_erf", "erfnet_enc"))
MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
MOMENT_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def compact(ckpt: dict, moments: str = "bf16") -> dict:
    """A resumable checkpoint with Adam's moments stored as ``moments`` (weights stay fp32)."""
    dtype = MOMENT_DTYPES[moments]
    optimizer = ckpt["optimizer"]
    state = {index: {k: v.to(dtype) if k in MOMENTS and v.is_floating_point() else v for k, v in entry.items()}
             for index, entry in optimizer["state"].items()}
    return {**ckpt, "optimizer": {**optimizer, "state": state}, "stored_moments": moments}


def expand(state: dict) -> dict:
    """``compact``'s inverse: the moments back in fp32, as the optimiser keeps them."""
    optimizer = state["optimizer"]
    entries = {index: {k: v.float() if k in MOMENTS and v.is_floating_point() else v for k, v in entry.items()}
               for index, entry in optimizer["state"].items()}
    out = {**state, "optimizer": {**optimizer, "state": entries}}
    out.pop("stored_moments", None)
    return out


def recipe_differences(config: dict, recipe: Optional[dict] = None) -> list[str]:
    """The recipe fields a run's config does not follow (names as options)."""
    saved = TrainConfig.from_dict(config)
    return [f"--{k.replace('_', '-')} {getattr(saved, k)!r} (recipe {v!r})" for k, v in (recipe or RECIPE).items()
            if k != "val_every" and getattr(saved, k) != (tuple(v) if isinstance(v, tuple) else v)]


def adopt(run: Path, campaign: Path, moments: str = "bf16", force: bool = False,
          recipe: Optional[dict] = None) -> Path:
    """``run``'s last.pt (a folder or the file) as the campaign's state of its model, and its
    metrics.jsonl as the model's history. Refuses a run off the recipe, or one behind the
    state already there, unless ``force``."""
    last = run if run.is_file() else run / LAST
    ckpt = load_checkpoint(last)
    if "optimizer" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{last}: not a resumable training checkpoint (no optimiser state)")
    differences = recipe_differences(ckpt["config"], recipe)
    if differences and not force:
        raise ValueError(f"{last}: not the campaign's recipe: {'; '.join(differences)} (--force adopts it anyway)")
    dest = campaign / ckpt["model"]
    if (dest / STATE).is_file() and not force:
        held = torch.load(dest / STATE, map_location="cpu", weights_only=True)
        if held["iteration"] > ckpt["iteration"]:
            raise ValueError(f"{dest / STATE} is further on (iteration {held['iteration']}) than {last} "
                             f"(iteration {ckpt['iteration']}); --force replaces it")
    dest.mkdir(parents=True, exist_ok=True)
    save_atomic(compact(ckpt, moments), dest / STATE)
    metrics = last.parent / LOG
    if metrics.is_file():
        shutil.copyfile(metrics, dest / LOG)
    return dest / STATE


def autocast_options(precision: str, device: str) -> dict:
    """``TrainConfig``'s ``amp``/``amp_dtype`` for ``precision`` (auto: PRECISION_BY_DEVICE
    for the device ``device`` resolves to)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        precision = PRECISION_BY_DEVICE.get(resolve_device(device).type, "fp32")
    return dict(amp=False, amp_dtype="auto") if precision == "fp32" else dict(amp=True, amp_dtype=precision)


def checkout(campaign: Path, model: str, work: Path, autocast: Optional[dict] = None) -> bool:
    """The model's state as ``work/<model>/last.pt`` (and its history), with this machine's
    ``autocast`` options (``autocast_options``) in its config, since a resumed run keeps its
    saved config; False when the campaign has none yet."""
    src = campaign / model
    if not (src / STATE).is_file():
        return False
    dest = work / model
    dest.mkdir(parents=True, exist_ok=True)
    state = expand(torch.load(src / STATE, map_location="cpu", weights_only=True))
    if autocast:
        state["config"] = {**state["config"], **autocast}
    save_atomic(state, dest / LAST)
    if (src / LOG).is_file():
        shutil.copyfile(src / LOG, dest / LOG)
    return True


def checkin(work: Path, model: str, campaign: Path, moments: str = "bf16") -> Optional[Path]:
    """``work/<model>``'s last.pt and history written back as the campaign's state."""
    last = work / model / LAST
    if not last.is_file():
        return None
    dest = campaign / model
    dest.mkdir(parents=True, exist_ok=True)
    save_atomic(compact(load_checkpoint(last), moments), dest / STATE)
    if (work / model / LOG).is_file():
        shutil.copyfile(work / model / LOG, dest / LOG)
    return dest / STATE


def standing(campaign: Path, model: str) -> dict:
    """Where a model stands: epochs, iterations, last logged loss, state size."""
    path = campaign / model / STATE
    if not path.is_file():
        return {"model": model, "epoch": 0, "iteration": 0}
    state = torch.load(path, map_location="cpu", weights_only=True)
    records = [json.loads(line) for line in (campaign / model / LOG).read_text().splitlines() if line.strip()] \
        if (campaign / model / LOG).is_file() else []
    last = records[-1] if records else {}
    return {"model": model, "epoch": int(state["epoch"]), "epochs": int(state["config"]["epochs"]),
            "iteration": int(state["iteration"]), "epoch_iteration": int(state.get("epoch_iteration", 0)),
            "train_loss": last.get("train_loss"), "images_per_s": last.get("images_per_s"),
            "megabytes": path.stat().st_size / 2**20, "moments": state.get("stored_moments", "fp32")}


def next_pair(campaign: Path, epochs: int = RECIPE["epochs"]) -> Optional[tuple[str, ...]]:
    """The first pair not yet through the schedule, or None when the campaign is done."""
    for pair in PAIRS:
        if any(standing(campaign, m)["epoch"] < epochs for m in pair):
            return pair
    return None


def run_campaign(campaign: Path, work: Path, budget_s: float, models: Optional[tuple[str, ...]] = None,
                 moments: str = "bf16", log=print, recipe: Optional[dict] = None, **options) -> list[dict]:
    """Continue ``models`` (default: the next unfinished pair) for ``budget_s`` seconds of
    training, then write their states back. ``options`` are the run's machine settings
    (device, data_root, data_on_device, cache, workers, threads, compile, limit, ...);
    the schedule itself is ``RECIPE``'s, whatever the machine (``recipe`` replaces it for
    smoke runs with tiny crops)."""
    recipe = recipe or RECIPE
    models = models or next_pair(campaign, recipe["epochs"])
    if not models:
        log("campaign: every pair is through the schedule")
        return []
    autocast = {k: options.pop(k) for k in ("amp", "amp_dtype") if k in options}
    resumed = [checkout(campaign, m, work, autocast) for m in models]
    if any(resumed) and not all(resumed):
        raise ValueError(f"{', '.join(models)}: some have a campaign state and some not; they train together "
                         "from the same point (adopt or start them together)")
    cfgs = [TrainConfig(model=m, out=str(work / m), progress=False, tensorboard=False,
                        **{**options, **autocast, **recipe})
            for m in models]
    deadline = time.monotonic() + budget_s

    def stop_at_deadline(trainer: Trainer) -> None:
        if time.monotonic() > deadline:
            trainer.stop.request(signal.SIGINT)

    started = time.monotonic()
    try:
        if not all(resumed) or _catch_up(cfgs, work, stop_at_deadline, log):
            train_together(cfgs, resume=all(resumed), log=log, on_step=stop_at_deadline)
    except NonFiniteLoss as exc:
        log(f"campaign: {exc}; states not written back")
        raise
    finally:
        seconds = time.monotonic() - started
    for m in models:
        checkin(work, m, campaign, moments)
    rows = [standing(campaign, m) for m in models]
    for row in rows:
        log(f"campaign: {row['model']} at epoch {row['epoch']}/{recipe['epochs']} + {row['epoch_iteration']} "
            f"iterations ({row['megabytes']:.1f} MB state) after {seconds:.0f} s")
    return rows


def _catch_up(cfgs: list[TrainConfig], work: Path, stop_at_deadline, log) -> bool:
    """Models of a pair that stand behind the other (runs adopted at different epochs)
    train alone, on the same schedule, up to the leader's iteration first. True when all
    stand together (the budget may end the catching up first)."""
    iterations = {c.model: int(torch.load(work / c.model / LAST, map_location="cpu", weights_only=True)["iteration"])
                  for c in cfgs}
    target = max(iterations.values())
    for cfg in cfgs:
        if iterations[cfg.model] >= target:
            continue
        log(f"campaign: {cfg.model} catches up from iteration {iterations[cfg.model]} to {target}")

        def stop_at_target(trainer: Trainer) -> None:
            if trainer.iteration >= target:
                trainer.stop.request(signal.SIGINT)
            stop_at_deadline(trainer)

        if train_together([cfg], resume=True, log=log, on_step=stop_at_target)[0].iterations < target:
            return False
    return True


# ============================================================================ CLI
def add_parser(subparsers) -> None:
    p = subparsers.add_parser("campaign", help="the fixed long CamVid schedule, resumable across machines",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="campaign_command", required=True)
    status = sub.add_parser("status", help="where each model stands")
    adopt_p = sub.add_parser("adopt", help="take an `eacnet train` run of the recipe into the campaign")
    adopt_p.add_argument("run", help="the run folder (or its last.pt)")
    adopt_p.add_argument("--force", action="store_true", help="adopt a run off the recipe or behind the state")
    run_p = sub.add_parser("run", help="continue the next pair (or --models) for --budget-s seconds")
    run_p.add_argument("--budget-s", type=number_in(0), required=True,
                       help="seconds of training before stopping (0: one step)")
    run_p.add_argument("--work", required=True, help="folder for the run folders (last.pt) while training")
    run_p.add_argument("--models", help="comma-separated models trained together (default: the next pair)")
    run_p.add_argument("--data-root", default="", help="CamVid folder (default: the usual lookup)")
    run_p.add_argument("--device", default="auto")
    run_p.add_argument("--data-on-device", action="store_true", help="training set on the device (GPU)")
    run_p.add_argument("--cache", action="store_true", help="decode the training images once")
    run_p.add_argument("--workers", type=at_least(0), default=2)
    add_threads(run_p)
    run_p.add_argument("--compile", nargs="?", const="auto", default="", choices=COMPILE_MODES[1:])
    run_p.add_argument("--precision", choices=PRECISIONS, default="auto",
                       help="autocast of this machine's training (auto: bf16 on CUDA, fp32 on the CPU)")
    run_p.add_argument("--limit", type=at_least(0), default=0,
                       help="first N images only (smoke runs; not the campaign)")
    for q in (status, adopt_p, run_p):
        q.add_argument("--campaign", default="campaign", help="the campaign folder (default ./campaign)")
        q.add_argument("--moments", choices=tuple(MOMENT_DTYPES), default="bf16",
                       help="precision of the stored Adam moments (default bf16)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    campaign = Path(args.campaign)
    if args.campaign_command == "adopt":
        print(f"adopted {args.run} -> {adopt(Path(args.run), campaign, args.moments, args.force)}")
        return 0
    if args.campaign_command == "status":
        for pair in PAIRS:
            for model in pair:
                row = standing(campaign, model)
                print(json.dumps(row))
        return 0
    options = dict(device=args.device, data_root=args.data_root, data_on_device=args.data_on_device,
                   cache=args.cache, workers=args.workers, threads=args.threads, compile=args.compile,
                   limit=args.limit, **autocast_options(args.precision, args.device))
    models = tuple(m.strip() for m in args.models.split(",")) if args.models else None
    rows = run_campaign(campaign, Path(args.work), args.budget_s, models, args.moments, **options)
    return 0 if rows else 1
