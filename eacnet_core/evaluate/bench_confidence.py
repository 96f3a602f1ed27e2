"""``eacnet bench-confidence``: how well the confidence and the frame score tell good from bad.

* **frame level**: AUROC separating clean CamVid val frames from the same frames corrupted
  (``corruptions``: Gaussian noise, defocus blur, darkness, fog, contrast, JPEG, half covered;
  severity 3), per corruption and averaged, for the frame score (``confidence.frame_score``)
  and, for comparison, for the plain softmax maximum (1 - the frame's mean confidence);
* **pixel level**: AUROC of the confidence for correct against wrong pixels of clean val
  frames, and the expected calibration error (ECE, 15 equal-width bins) with a reliability
  diagram, at temperature 1 and, with ``--fit-temperature``, at a temperature fitted on val
  (written into a copy of the checkpoint, never over the input; never fitted on test);
* **the clean ranges**: each image cue's 0.5th and 99.5th percentile on CamVid *train* frames,
  which is what ``confidence.ScoreReference``'s defaults were set from.

JSON with every figure, and a matplotlib figure.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from eacnet_core.data.corruptions import CORRUPTIONS, corrupt
from eacnet_core.infer.args import add_runtime_arguments, options_from_args
from eacnet_core.infer.confidence import CAMVID_REFERENCE, doubt, frame_score, ids_and_confidence, image_cues
from eacnet_core.options import add_overwrite, at_least
from eacnet_core.outputs import check_outputs, write_json
from eacnet_core.progress import progress_bar

ECE_BINS = 15
#: pixels per frame kept (at random, fixed seed) for fitting the temperature
FIT_PIXELS = 4000


def auroc(negatives: Sequence[float], positives: Sequence[float]) -> float:
    """Probability that a positive scores above a negative, ties counting half (the
    Mann-Whitney statistic); what ROC AUC is."""
    neg, pos = np.asarray(negatives, float), np.asarray(positives, float)
    if not len(neg) or not len(pos):
        raise ValueError("AUROC needs at least one negative and one positive")
    values = np.concatenate([neg, pos])
    order = values.argsort(kind="mergesort")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    start = 0
    for end in range(1, len(values) + 1):  # average ranks of ties
        if end == len(values) or sorted_values[end] != sorted_values[start]:
            ranks[order[start:end]] = (start + end + 1) / 2.0
            start = end
    rank_sum = ranks[len(neg):].sum()
    return float((rank_sum - len(pos) * (len(pos) + 1) / 2.0) / (len(neg) * len(pos)))


def histogram_auroc(hist_negative: np.ndarray, hist_positive: np.ndarray) -> float:
    """AUROC from two histograms over the same ordered bins (ties within a bin count half):
    exact for the uint8 confidence, without holding millions of pixels."""
    neg, pos = np.asarray(hist_negative, float), np.asarray(hist_positive, float)
    below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])
    return float((pos * (below + 0.5 * neg)).sum() / (neg.sum() * pos.sum()))


def calibration(hist_correct: np.ndarray, hist_wrong: np.ndarray, bins: int = ECE_BINS) -> dict:
    """ECE and the reliability diagram's points from uint8-confidence histograms: each pixel
    at its confidence value / 255, in ``bins`` equal-width bins of [0, 1]."""
    values = np.arange(256) / 255.0
    index = np.minimum((values * bins).astype(int), bins - 1)
    total = hist_correct + hist_wrong
    count = np.bincount(index, total, bins)
    correct = np.bincount(index, hist_correct, bins)
    conf_sum = np.bincount(index, total * values, bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy, mean_conf = correct / count, conf_sum / count
    filled = count > 0
    ece = float(np.sum(count[filled] * np.abs(accuracy[filled] - mean_conf[filled])) / count.sum())
    return {"ece": ece, "bin_count": count.astype(int).tolist(),
            "bin_accuracy": [None if not f else float(a) for a, f in zip(accuracy, filled, strict=True)],
            "bin_confidence": [None if not f else float(c) for c, f in zip(mean_conf, filled, strict=True)]}


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of ``labels`` under
    softmax(logits / T) (Guo et al. 2017), over (N, C) logits of val pixels."""
    x, y = torch.from_numpy(logits).float(), torch.from_numpy(labels).long()
    log_t = torch.zeros((), requires_grad=True)
    optimiser = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100)

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(x / log_t.exp(), y)
        loss.backward()
        return loss

    optimiser.step(closure)
    return float(log_t.detach().exp())


def _frames(root: Path, split: str, count: int) -> list[tuple[Path, Path]]:
    from eacnet_core.data.datasets import camvid_pairs

    pairs = camvid_pairs(root, split)
    if count and count < len(pairs):  # spread over the split's sequences, not its first minute
        pairs = [pairs[int(i)] for i in np.linspace(0, len(pairs) - 1, count)]
    return pairs


def bench_model(segmenter, pairs: Sequence[tuple[Path, Path]], ignore: int, severity: int = 3,
                progress: bool = True) -> dict:
    """Every figure of one model on ``pairs`` (val images and labels)."""
    corruptions = list(CORRUPTIONS)
    scores: dict[str, list[float]] = {name: [] for name in ["clean", *corruptions]}
    plain: dict[str, list[float]] = {name: [] for name in scores}
    hist_correct, hist_wrong = np.zeros(256), np.zeros(256)
    fit_logits, fit_labels = [], []
    rng = np.random.default_rng(0)
    for index, (image_path, label_path) in enumerate(progress_bar(pairs, enabled=progress, desc=segmenter.model_name,
                                                                  unit="frame")):
        bgr = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        label = cv2.imread(str(label_path), cv2.IMREAD_GRAYSCALE)
        for name in scores:
            frame = bgr if name == "clean" else corrupt(bgr, name, severity, seed=index)
            batch = segmenter.preprocess(frame)
            logits = segmenter.logits(batch)
            ids, confidence = ids_and_confidence(logits, segmenter.temperature)
            scores[name].append(frame_score(confidence, frame))
            plain[name].append(1.0 - float(confidence.mean()) / 255.0)
            if name == "clean":
                valid = label != ignore
                right = (ids == label) & valid
                hist_correct += np.bincount(confidence[right], minlength=256)
                hist_wrong += np.bincount(confidence[valid & ~right], minlength=256)
                flat = np.asarray(logits.float() if isinstance(logits, torch.Tensor) else logits)[0]
                keep = rng.choice(np.flatnonzero(valid), size=min(FIT_PIXELS, int(valid.sum())), replace=False)
                fit_logits.append(flat.reshape(flat.shape[0], -1)[:, keep].T)
                fit_labels.append(label.reshape(-1)[keep])
    frame_auroc = {name: auroc(scores["clean"], scores[name]) for name in corruptions}
    plain_auroc = {name: auroc(plain["clean"], plain[name]) for name in corruptions}
    return {
        "model": segmenter.model_name, "frames": len(pairs), "severity": severity,
        "temperature": segmenter.temperature, "ran": segmenter.describe(),
        "frame_auroc": frame_auroc, "frame_auroc_mean": float(np.mean(list(frame_auroc.values()))),
        "frame_auroc_min": float(min(frame_auroc.values())),
        "plain_max_auroc": plain_auroc, "plain_max_auroc_mean": float(np.mean(list(plain_auroc.values()))),
        "clean_score_mean": float(np.mean(scores["clean"])),
        "score_mean": {name: float(np.mean(v)) for name, v in scores.items()},
        "scores": {name: [round(x, 4) for x in v] for name, v in scores.items()},
        "pixel_auroc": histogram_auroc(hist_wrong, hist_correct),  # correct pixels are the positives
        "calibration": calibration(hist_correct, hist_wrong),
        "_fit": (np.concatenate(fit_logits), np.concatenate(fit_labels)),
    }


def calibrated_at(fit: tuple[np.ndarray, np.ndarray], temperature: float) -> dict:
    """ECE and pixel AUROC of the fitting pixels' confidence at ``temperature``."""
    logits, labels = fit
    probability = torch.softmax(torch.from_numpy(logits).float() / temperature, 1)
    top, ids = probability.max(1)
    confidence = np.floor(top.numpy() * 255 + 0.5).astype(int)
    right = ids.numpy() == labels
    hist_correct = np.bincount(confidence[right], minlength=256).astype(float)
    hist_wrong = np.bincount(confidence[~right], minlength=256).astype(float)
    return {"ece": calibration(hist_correct, hist_wrong)["ece"], "calibration": calibration(hist_correct, hist_wrong)}


def clean_ranges(pairs: Sequence[tuple[Path, Path]], segmenter=None, progress: bool = True) -> dict:
    """Each image cue's (and, given a segmenter, the doubt's) 0.5th/50th/99.5th percentile on
    clean frames: where ``ScoreReference``'s clean edges come from."""
    values: dict[str, list[float]] = {}
    for image_path, _ in progress_bar(pairs, enabled=progress, desc="clean ranges", unit="frame"):
        bgr = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        cues = image_cues(bgr)
        if segmenter is not None:
            _, confidence = ids_and_confidence(segmenter.logits(segmenter.preprocess(bgr)), segmenter.temperature)
            cues["doubt"] = doubt(confidence)
        for key, value in cues.items():
            values.setdefault(key, []).append(value)
    return {key: {"p0.5": float(np.percentile(v, 0.5)), "p50": float(np.percentile(v, 50)),
                  "p99.5": float(np.percentile(v, 99.5))} for key, v in values.items()}


def _label(model: str) -> str:
    """A registry name as given; a checkpoint file by its stem."""
    return Path(model).stem if model.endswith(".pt") or Path(model).is_file() else model


def plot(results: Sequence[dict], path: Path) -> None:
    """Frame AUROC per corruption (score and plain maximum) and the reliability diagrams."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    names = list(results[0]["frame_auroc"])
    width = 0.8 / (2 * len(results))
    for i, result in enumerate(results):
        for j, (key, label) in enumerate((("frame_auroc", "frame score"), ("plain_max_auroc", "plain max"))):
            offset = (2 * i + j - len(results) + 0.5) * width
            axes[0].bar(np.arange(len(names)) + offset, [result[key][n] for n in names], width,
                        label=f"{result.get('label', result['model'])}: {label}", alpha=1.0 if j == 0 else 0.45)
    axes[0].axhline(0.8, color="grey", lw=0.8, ls="--")
    axes[0].set_xticks(range(len(names)), names, rotation=25)
    axes[0].set_ylim(0.0, 1.01)
    axes[0].set_ylabel("AUROC clean vs corrupted")
    axes[0].set_title(f"Frame level, severity {results[0]['severity']}, {results[0]['frames']} val frames")
    axes[0].legend(fontsize=8, loc="lower left")
    axes[1].plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    for result in results:
        for key, style in (("calibration", "-o"), ("calibration_fitted", "--s")):
            if key not in result:
                continue
            cal = result[key]
            points = [(c, a) for c, a in zip(cal["bin_confidence"], cal["bin_accuracy"], strict=True) if c is not None]
            temperature = result.get("fitted_temperature", 1.0) if key != "calibration" else result["temperature"]
            label = f"{result.get('label', result['model'])} T={temperature:.2f}"
            axes[1].plot(*zip(*points, strict=True), style, ms=3, label=f"{label} ECE {cal['ece']:.3f}")
    axes[1].set_xlabel("confidence (softmax maximum)")
    axes[1].set_ylabel("accuracy")
    axes[1].set_title("Reliability, clean val pixels (15 bins)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _severity(text: str) -> int:
    """argparse type of --severity: an integer 1-5 (argparse names the option beside the message)."""
    value = at_least(1)(text)
    if value > 5:
        raise argparse.ArgumentTypeError(f"must be an integer in 1-5, got {text!r}")
    return value


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("bench-confidence", help="how well confidence and frame score flag bad frames",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="eacnet_dab,eacnet_erf",
                   help="comma-separated registry models (run with their packaged weights) and/or checkpoint files "
                        "(default %(default)s). The packaged CamVid weights trained on train+val: for held-out "
                        "pixel figures and a temperature, pass weights trained on train only")
    p.add_argument("--data", default="", help="CamVid folder (default: $EACNET_DATA or ../shared/data/CamVid)")
    p.add_argument("--frames", type=at_least(0), default=0, help="val frames, spread over the split (0: all)")
    p.add_argument("--reference-frames", type=at_least(0), default=0,
                   help="also measure the image cues' clean ranges on this many train frames (0: skip)")
    p.add_argument("--severity", type=_severity, default=3, help="corruption severity 1-5 (default 3)")
    p.add_argument("--fit-temperature", metavar="DIR", default="",
                   help="fit a temperature on the val pixels and write <name>_calibrated.pt (the checkpoint with "
                        "its 'temperature') into DIR; meaningful only for weights that did not train on val")
    p.add_argument("--json", required=True, metavar="OUT", help="write every figure here")
    p.add_argument("--plot", default="", metavar="PNG", help="write the figure here")
    add_overwrite(p)
    p.add_argument("--no-progress", action="store_true")
    add_runtime_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from eacnet_core.checkpoint import load_checkpoint, save_atomic
    from eacnet_core.data.classes import CAMVID
    from eacnet_core.data.roots import find_camvid
    from eacnet_core.infer.segmenter import Segmenter

    root = find_camvid(args.data or None)
    if root is None:
        raise FileNotFoundError(f"no CamVid folder found{f' at {args.data}' if args.data else ''}; pass --data")
    out_json, out_plot = Path(args.json), Path(args.plot) if args.plot else None
    models = [m for m in args.models.split(",") if m]
    written = [out_json] + ([out_plot] if out_plot else [])
    if args.fit_temperature:
        written += [Path(args.fit_temperature) / f"{_label(m)}_calibrated.pt" for m in models]
    check_outputs(written, overwrite=args.overwrite)
    options = options_from_args(args)
    pairs = _frames(root, "val", args.frames)
    report: dict = {"data": str(root), "val_frames": len(pairs), "corruptions": list(CORRUPTIONS),
                    "reference": CAMVID_REFERENCE.to_dict(), "models": []}
    if args.reference_frames:
        report["train_clean_ranges"] = clean_ranges(_frames(root, "train", args.reference_frames),
                                                    progress=not args.no_progress)
    for model in models:
        is_file = model.endswith(".pt") or Path(model).is_file()
        segmenter = (Segmenter.from_checkpoint(model, options) if is_file
                     else Segmenter.from_name(model, options=options))
        segmenter.warmup(*cv2.imread(str(pairs[0][0])).shape[:2])
        result = bench_model(segmenter, pairs, CAMVID.ignore_index, args.severity, not args.no_progress)
        result["weights"], result["label"] = str(segmenter.weights), _label(model)
        fit = result.pop("_fit")
        if args.fit_temperature:
            temperature = fit_temperature(*fit)
            result["fitted_temperature"] = temperature
            result["calibration_fitted"] = calibrated_at(fit, temperature)["calibration"]
            result["calibration_fit_pixels_t1"] = calibrated_at(fit, 1.0)["calibration"]
            ckpt = load_checkpoint(segmenter.weights)
            ckpt["temperature"] = temperature
            save_atomic(ckpt, Path(args.fit_temperature) / f"{_label(model)}_calibrated.pt")
        report["models"].append(result)
        print(f"{_label(model)}: frame AUROC mean {result['frame_auroc_mean']:.3f} min {result['frame_auroc_min']:.3f} "
              f"(plain max mean {result['plain_max_auroc_mean']:.3f}); pixel AUROC {result['pixel_auroc']:.3f}; "
              f"ECE {result['calibration']['ece']:.4f}"
              + (f" -> {result['calibration_fitted']['ece']:.4f} at T={result['fitted_temperature']:.3f}"
                 if "fitted_temperature" in result else ""))
        print("  " + ", ".join(f"{k} {v:.3f}" for k, v in result["frame_auroc"].items()))
    write_json(out_json, report)
    if out_plot:
        plot(report["models"], out_plot)
    print(f"wrote {out_json}" + (f" and {out_plot}" if out_plot else ""))
    return 0

