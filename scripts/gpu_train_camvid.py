#!/usr/bin/env python3
"""Train EACNets and their control backbones side by side on one GPU, in a fixed time.

How the shipped CamVid weights get their GPU schedule. GPU time comes in windows of
minutes, so the number of epochs is fixed by measurement, not guessed:

1. ``--data`` is staged as the CamVid layout the loader reads (JPEG copies, made to fit
   a device transfer, are decoded back to PNG once);
2. every model runs a short probe (3 epochs, all models at once, so the GPU is shared
   as it will be), and its images/s is read from the probe's metrics.jsonl;
3. each pair (EACNet, control) gets the same number of epochs: what the slower of the
   two fits into the remaining budget (capped at ``--max-epochs``), so the ablation is
   equal-budget by construction;
4. the real runs train together (``eacnet train`` with the options after ``--``); at the
   hard deadline any run still going is stopped with SIGINT, which saves its last.pt;
5. each run's last.pt is slimmed to fp16 into ``--collect`` with its metrics.jsonl and
   log, and a summary line per model is printed.

``continue`` carries the fixed long schedule (``eacnet_core/train/campaign.py``: 1,000 epochs of
the model cards' recipe, the DAB pair then the ERF pair, both models of a pair in one
process on the same batches) on for ``--budget-s`` seconds: the repository's
``campaign/`` folder is copied to ``--out``, trained on from its states, and written back
there (a few MB per model) for the next window, GPU or CPU, to continue::

    python3 scripts/gpu_train_camvid.py continue --data .devdata/CamVid --runs /tmp/runs \
        --out $OUT --budget-s 420 --compile auto

``core`` runs any ROS-free ``eacnet`` subcommand (``train``, ``bench``, ``eval``, ...)
where the ROS-side extras (rosbags) are not installed, as on a bare GPU machine:
``python3 scripts/gpu_train_camvid.py core bench --device cuda``.

Example (what produced the shipped weights, 2026-11-26)::

    python3 scripts/gpu_train_camvid.py campaign --data .devdata/CamVid --runs /tmp/runs \\
        --collect $OUT --budget-s 400 --pairs eacnet_dab:dabnet eacnet_erf:erfnet_enc --init packaged -- \\
        --train-split trainval --batch-size 16 --lr 1e-3 --weight-decay 2e-4 --device cuda --amp \\
        --amp-dtype bf16 --channels-last --data-on-device
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROBE_EPOCHS = 3
#: Share of the measured rate the plan counts on (validations, checkpoints, start-up).
SAFETY = 0.85


def stage_camvid(src: Path, dst: Path) -> Path:
    """``src`` as a PNG CamVid layout: returned as is when it already is one, else every
    ``<split>/*.jpg`` is decoded into ``dst/<split>/*.png`` and annotations are linked."""
    import cv2

    splits = [p.name for p in src.iterdir() if p.is_dir() and not p.name.endswith("annot")]
    jpegs = [p for split in splits for p in sorted((src / split).glob("*.jpg"))]
    if not jpegs:
        return src
    for split in splits:
        (dst / split).mkdir(parents=True, exist_ok=True)
        annot = dst / f"{split}annot"
        if not annot.exists() and (src / f"{split}annot").is_dir():
            annot.symlink_to((src / f"{split}annot").resolve())

    def decode(path: Path) -> None:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"{path}: cannot decode")
        cv2.imwrite(str(dst / path.parent.name / f"{path.stem}.png"), image, [cv2.IMWRITE_PNG_COMPRESSION, 1])

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 4) as pool:
        list(pool.map(decode, jpegs))
    print(f"staged {len(jpegs)} JPEG images of {src} as PNG in {dst}", flush=True)
    return dst


def launch(model: str, out: Path, data: Path, epochs: int, init: str, extra: list[str], val_every: int):
    """One ``eacnet train`` run in its own process (its own CUDA context), logging to out/train.log."""
    out.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, str(Path(__file__).resolve()), "core", "train", "--model", model, "--dataset", "camvid",
            "--data-root", str(data), "--out", str(out), "--epochs", str(epochs), "--val-every", str(val_every),
            "--no-progress", "--no-tensorboard", *extra]
    if init == "packaged":
        weights = REPO / "eacnet_core" / "weights" / f"{model}_camvid.pt"
        if not weights.is_file():
            raise FileNotFoundError(f"{weights}: no packaged weights to initialise {model} from")
        args += ["--init-from", str(weights)]
    elif init:
        args += ["--init-from", init]
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", PYTHONUNBUFFERED="1")
    log = open(out / "train.log", "w")  # noqa: SIM115 - closed with the process below
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env), log


def records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_all(procs: dict, deadline: float) -> dict[str, int]:
    """Wait for every run; SIGINT (save and stop) the ones still going at ``deadline``."""
    codes: dict[str, int] = {}
    interrupted: set[str] = set()
    while len(codes) < len(procs):
        for name, (proc, log) in procs.items():
            if name in codes:
                continue
            code = proc.poll()
            if code is not None:
                codes[name] = code
                log.close()
            elif time.monotonic() > deadline and name not in interrupted:
                print(f"{name}: past the deadline, SIGINT (saves last.pt)", flush=True)
                proc.send_signal(signal.SIGINT)
                interrupted.add(name)
        time.sleep(0.5)
    return codes


def plan_epochs(rates: dict[str, float], pairs: list[tuple[str, ...]], images: int, seconds: float,
                max_epochs: int) -> dict[str, int]:
    """Equal epochs within a pair: what the slower model fits into ``seconds``."""
    plan = {}
    for pair in pairs:
        rate = min(rates[m] for m in pair)
        epochs = max(1, min(max_epochs, math.floor(rate * seconds * SAFETY / images)))
        plan.update({m: epochs for m in pair})
    return plan


def collect(run: Path, model: str, dest: Path) -> str:
    """fp16 weights of the run's last.pt as dest/<model>.pt; its logs go into logs.tar.gz."""
    from eacnet_core.evaluate.packaging import slim

    last = run / "last.pt"
    if not last.is_file():
        return f"{model}: no last.pt"
    slim(last, dest / f"{model}.pt")
    history = records(run)
    final = history[-1] if history else {}
    vals = [r for r in history if "val_miou" in r]
    miou = f"{100 * vals[-1]['val_miou']:.2f}" if vals else "-"
    gamma = final.get("attention_gamma")
    rate = sum(r["images_per_s"] for r in history) / max(1, len(history))
    seconds = sum(r["seconds"] for r in history)
    return (f"{model}: {final.get('epoch', 0)} epochs, {seconds:.0f} s, {rate:.0f} img/s, last val mIoU {miou}"
            + (f", gamma {gamma:.4f}" if gamma is not None else ""))


def campaign(args: argparse.Namespace, extra: list[str]) -> int:
    started = time.monotonic()
    deadline = started + args.budget_s
    pairs = [tuple(p.split(":")) for p in args.pairs]
    models = [m for pair in pairs for m in pair]
    data = stage_camvid(Path(args.data), Path(args.runs) / "data")
    split = extra[extra.index("--train-split") + 1] if "--train-split" in extra else "train"
    images = sum(len(list((data / s).glob("*.png"))) for s in (("train", "val") if split == "trainval" else (split,)))
    runs = Path(args.runs)
    probes = {m: launch(m, runs / "probe" / m, data, PROBE_EPOCHS, args.init, extra, 0) for m in models}
    codes = wait_all(probes, deadline)
    rates = {}
    for m in models:
        history = records(runs / "probe" / m)
        if codes[m] != 0 or len(history) < PROBE_EPOCHS:
            print((runs / "probe" / m / "train.log").read_text()[-3000:], flush=True)
            raise SystemExit(f"{m}: probe failed (exit {codes[m]})")
        # The slowest epoch after the first (start-up, cuDNN autotuning): the probes do not
        # start together, so the last epoch may have had the GPU to itself (2026-11-26: the
        # DAB pair measured 166 img/s there, then trained at ~105 beside the ERF pair).
        rates[m] = min(r["images_per_s"] for r in history[1:])
    left = deadline - time.monotonic()
    plan = plan_epochs(rates, pairs, images, left, args.max_epochs)
    print(f"probe ({time.monotonic() - started:.0f} s): "
          + ", ".join(f"{m} {rates[m]:.0f} img/s -> {plan[m]} epochs" for m in models)
          + f" of {images} images, {left:.0f} s left", flush=True)
    procs = {m: launch(m, runs / m, data, plan[m], args.init, extra, max(1, plan[m] // args.validations))
             for m in models}
    codes = wait_all(procs, deadline + args.grace_s)
    dest = Path(args.collect)
    dest.mkdir(parents=True, exist_ok=True)
    for m in models:
        print(collect(runs / m, m, dest) + (f" (exit {codes[m]})" if codes[m] else ""), flush=True)
    with tarfile.open(dest / "logs.tar.gz", "w:gz") as tar:
        for m in models:
            for name in ("metrics.jsonl", "train.log"):
                for kind in (m, f"probe/{m}"):
                    path = runs / kind / name
                    if path.is_file():
                        tar.add(path, arcname=f"{kind}/{name}")
    print(f"campaign done in {time.monotonic() - started:.0f} s", flush=True)
    return 0 if not any(codes.values()) else 1


def core(argv: list[str]) -> int:
    """An ``eacnet`` core subcommand without the ROS-side commands' imports."""
    sys.path.insert(0, str(REPO))
    from eacnet_core.cli import add_core_commands

    parser = argparse.ArgumentParser(prog="eacnet (core)")
    add_core_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


def continue_campaign(argv: list[str]) -> int:
    """Stage the data, copy the campaign folder to --out, train on for --budget-s, leave the states there."""
    import shutil

    p = argparse.ArgumentParser(prog="gpu_train_camvid.py continue")
    p.add_argument("--data", required=True, help="CamVid folder (PNG, or JPEG copies to decode)")
    p.add_argument("--runs", required=True, help="folder for the staged data and the work runs")
    p.add_argument("--out", required=True, help="the campaign folder is written to OUT/campaign")
    p.add_argument("--campaign", default=str(REPO / "campaign"), help="where the states are (default: the repo's)")
    p.add_argument("--budget-s", type=float, required=True, help="seconds of training")
    p.add_argument("--compile", default="auto", help="torch.compile mode of the step ('' = eager)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--models", default="", help="comma-separated (default: the next unfinished pair)")
    args = p.parse_args(argv)
    data = stage_camvid(Path(args.data), Path(args.runs) / "data")
    dest = Path(args.out) / "campaign"
    if Path(args.campaign).is_dir():
        shutil.copytree(args.campaign, dest, dirs_exist_ok=True)
    command = ["campaign", "run", "--campaign", str(dest), "--work", str(Path(args.runs) / "work"), "--budget-s",
               str(args.budget_s), "--device", args.device, "--data-root", str(data), "--data-on-device",
               "--workers", "0"]
    if args.compile:
        command += ["--compile", args.compile]
    if args.models:
        command += ["--models", args.models]
    code = core(command)
    core(["campaign", "status", "--campaign", str(dest)])
    return code


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["core"]:
        return core(argv[1:])
    if argv[:1] == ["continue"]:
        return continue_campaign(argv[1:])
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("campaign",))
    p.add_argument("--data", required=True, help="CamVid folder (PNG, or JPEG copies to decode)")
    p.add_argument("--runs", required=True, help="folder for the staged data, probes and runs")
    p.add_argument("--collect", required=True, help="folder for the fp16 weights and logs.tar.gz")
    p.add_argument("--budget-s", type=float, required=True, help="seconds from now until the runs should end")
    p.add_argument("--grace-s", type=float, default=30.0, help="after the budget, SIGINT runs still going")
    p.add_argument("--pairs", nargs="+", required=True, help="EACNET:CONTROL pairs given equal epochs")
    p.add_argument("--max-epochs", type=int, default=1000, help="cap (the paper's schedule: 1000)")
    p.add_argument("--validations", type=int, default=8, help="validations per run (default 8)")
    p.add_argument("--init", default="", help="'packaged' (each model's shipped file), a checkpoint, or '' (scratch)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    return campaign(args, extra)


if __name__ == "__main__":
    sys.exit(main())
