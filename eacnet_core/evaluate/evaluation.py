"""``eacnet eval``: mIoU, per-class IoU and pixel accuracy of a checkpoint on a dataset split.

The network sees the image exactly as the inference path prepares it (same
normalisation, optional resize to an inference size), the class mask is brought back to
the label's resolution with nearest neighbour as the Segmenter does, and the confusion
matrix is accumulated over every valid pixel at full label resolution. Training's
validation calls ``evaluate_model`` too, so the two numbers are the same number.
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from eacnet_core.checkpoint import (
    CheckpointError,
    checkpoint_dataset,
    load_checkpoint,
    missing_weights_error,
    model_from_checkpoint,
    weights_for,
)
from eacnet_core.data.classes import DatasetInfo
from eacnet_core.data.datasets import (
    DATASET_KINDS,
    DatasetError,
    SegmentationDataset,
    build_dataset,
    prepare_worker_fork,
)
from eacnet_core.data.roots import DATA_ROOT_HELP, default_data_root
from eacnet_core.data.transforms import EvalTransform
from eacnet_core.evaluate.metrics import ConfusionMatrix
from eacnet_core.infer.args import add_int8_calibration
from eacnet_core.infer.masks import mask_at_size
from eacnet_core.infer.segmenter import BACKENDS, Segmenter, SegmenterOptions
from eacnet_core.models import MODELS
from eacnet_core.options import (
    Alias,
    add_batch_size,
    add_device,
    add_out,
    add_overwrite,
    add_resize,
    add_threads,
    at_least,
    hxw,
)
from eacnet_core.outputs import check_output_folder, check_outputs, write_bytes, write_image, write_json
from eacnet_core.progress import progress_bar
from eacnet_core.runtime import (
    DTYPES,
    PRECISIONS,
    autocast,
    collective_device,
    configure_torch,
    resolve_device,
    resolve_precision,
    sync,
)

#: Called per batch with (class-id predictions at label size (B, H, W) uint8/int64, dataset indices).
PredictionHook = Callable[[np.ndarray, list[int]], None]


@dataclass
class EvalResult:
    confusion: ConfusionMatrix
    images: int
    seconds: float  # wall time of the whole loop (loading included)
    model_seconds: float  # forward + argmax only

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def model_images_per_s(self) -> float:
        return self.images / self.model_seconds if self.model_seconds > 0 else 0.0


def predict_to_label_size(logits: torch.Tensor, label_hw: tuple[int, int]) -> np.ndarray:
    """(B, C, h, w) logits -> (B, H, W) uint8 class ids at the label size, each image through
    ``masks.mask_at_size`` (what ``Segmenter.segment`` does). Labels are uint8 PNGs, so
    class ids fit uint8."""
    return np.stack([mask_at_size(logits[i:i + 1], label_hw) for i in range(logits.shape[0])])


def segmenter_forward(segmenter: Segmenter) -> Callable[[torch.Tensor], torch.Tensor]:
    """The Segmenter's forward pass as a batch -> logits function, one image at a time, so
    ``eacnet eval --backend/--precision`` scores exactly the path the node runs with those
    settings: with auto, the choice is made on the first image (as the node's first frame)."""
    segmenter.warmup()

    def forward(batch: torch.Tensor) -> torch.Tensor:
        rows = []
        for i in range(batch.shape[0]):
            image = batch[i:i + 1].float().cpu().numpy()
            segmenter.settle(image)
            rows.append(torch.as_tensor(segmenter.logits(image)).float().cpu().numpy())
        return torch.from_numpy(np.concatenate(rows))

    return forward


def evaluate_model(model: nn.Module | Callable[[torch.Tensor], torch.Tensor], loader: DataLoader, info: DatasetInfo,
                   device: torch.device, amp_dtype: Optional[torch.dtype] = None, progress: bool = False,
                   on_predictions: Optional[PredictionHook] = None) -> EvalResult:
    """Run ``model`` over ``loader`` in eval mode and accumulate the confusion matrix.

    Images go in with the model's own dtype, so a model cast to fp16 / bf16 runs as the
    Segmenter runs it (``eacnet eval --precision``); ``amp_dtype`` autocasts an fp32 model
    instead (training's validation under ``--amp``).

    Under torch.distributed each process evaluates its own shard and the matrices are
    summed, so every process returns the whole split's result."""
    confusion = ConfusionMatrix(info.num_classes, info.ignore_index, info.class_names)
    module = model if isinstance(model, nn.Module) else None
    was_training = module is not None and module.training
    if module is not None:
        module.eval()
    dtype = next(module.parameters()).dtype if module is not None else torch.float32
    images, model_seconds = 0, 0.0
    start = time.perf_counter()
    batches = loader
    if progress:
        batches = progress_bar(loader, desc="eval", unit="batch", leave=False, dynamic_ncols=True)
    with torch.inference_mode():
        for batch in batches:
            image, label, index = batch[0], batch[1], batch[2]
            t0 = time.perf_counter()
            x = image.to(device, dtype=dtype, non_blocking=True)
            with autocast(device, amp_dtype):
                logits = model(x)
            pred = predict_to_label_size(logits.float(), tuple(label.shape[-2:]))
            sync(device)
            model_seconds += time.perf_counter() - t0
            labels = label.numpy()
            for p, lbl in zip(pred, labels, strict=True):
                confusion.update(p, lbl)
            images += len(pred)
            if on_predictions is not None:
                on_predictions(pred, [int(i) for i in index])
    if module is not None:
        module.train(was_training)
    seconds = time.perf_counter() - start
    if dist.is_available() and dist.is_initialized():
        confusion.matrix, images, seconds, model_seconds = _all_reduce(confusion.matrix, images, seconds,
                                                                       model_seconds, device)
    return EvalResult(confusion, images, seconds, model_seconds)


def _all_reduce(matrix: np.ndarray, images: int, seconds: float, model_seconds: float,
                device: torch.device) -> tuple[np.ndarray, int, float, float]:
    """Sum matrices and image counts over processes; times are the slowest process's."""
    backend_device = collective_device(device)
    counts = torch.from_numpy(np.append(matrix.ravel(), images)).to(backend_device)
    dist.all_reduce(counts)
    times = torch.tensor([seconds, model_seconds], dtype=torch.float64, device=backend_device)
    dist.all_reduce(times, op=dist.ReduceOp.MAX)
    counts = counts.cpu().numpy()
    return counts[:-1].reshape(matrix.shape), int(counts[-1]), float(times[0]), float(times[1])


def same_size_collate(batch: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack a batch, with a clear message when image sizes differ (use batch size 1)."""
    image_sizes = {tuple(item[0].shape[-2:]) for item in batch}
    label_sizes = {tuple(item[1].shape[-2:]) for item in batch}
    if len(image_sizes) > 1 or len(label_sizes) > 1:
        raise DatasetError(f"images of different sizes in one evaluation batch ({sorted(image_sizes | label_sizes)}): "
                           "use --batch-size 1")
    return (torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch]),
            torch.tensor([b[2] for b in batch]))


def eval_loader(dataset: Dataset, batch_size: int = 1, workers: int = 0, sampler=None,
                pin_memory: bool = False) -> DataLoader:
    # A generator of its own: starting an evaluation must not advance the global torch RNG.
    if workers > 0:
        prepare_worker_fork()
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, sampler=sampler, num_workers=workers,
                      collate_fn=same_size_collate, pin_memory=pin_memory, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------- reporting
def report_json(result: EvalResult, model: str, dataset: str, split: str, weights: str = "") -> dict:
    return {"model": model, "dataset": dataset, "split": split, "images": result.images,
            **result.confusion.summary(), "images_per_s": result.images_per_s, "weights": weights}


def plot_per_class(confusion: ConfusionMatrix, path: str | Path, title: str = "") -> Path:
    """Per-class IoU bar chart (headless Agg backend) with the mIoU as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ious = 100 * confusion.per_class_iou
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(ious) + 2), 4.5))
    bars = ax.bar(range(len(ious)), ious, color="#3a78b5")
    ax.axhline(100 * confusion.miou, color="#c0392b", linestyle="--", label=f"mIoU {100 * confusion.miou:.1f}%")
    for bar, value in zip(bars, ious, strict=True):
        ax.text(bar.get_x() + bar.get_width() / 2, value + 1, f"{value:.1f}", ha="center", fontsize=7)
    ax.set_xticks(range(len(ious)))
    ax.set_xticklabels(confusion.class_names, rotation=45, ha="right")
    ax.set_ylim(0, 105)
    ax.set_ylabel("IoU (%)")
    ax.set_title(title or "per-class IoU")
    ax.legend(loc="upper right")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return write_bytes(path, buffer.getvalue())


def prediction_paths(dataset: SegmentationDataset, folder: Path, index: int) -> tuple[Path, Path]:
    """``<stem>.png`` (class ids) and ``<stem>_color.png`` (palette) of one image."""
    stem = dataset.samples[index].image.stem
    return folder / f"{stem}.png", folder / f"{stem}_color.png"


def check_prediction_outputs(dataset: SegmentationDataset, folder: Optional[Path], overwrite: bool,
                             others: tuple[Optional[Path], ...] = (), extra_inputs: tuple[Path, ...] = ()) -> None:
    """Before the first forward pass: the predictions' folder is no folder the dataset is
    read from (--save-predictions into the labels folder once replaced the ground truth), no
    output is an input or another output (two images with one stem), and none exists unless
    ``overwrite``. ``others``: the run's other output files (--json, --plot)."""
    data = [p for sample in dataset.samples for p in (sample.image, sample.label)]
    outputs = [p for p in others if p is not None]
    if folder is not None:
        check_output_folder(folder, {p.parent for p in data})
        outputs += [p for i in range(len(dataset)) for p in prediction_paths(dataset, folder, i)]
    check_outputs(outputs, inputs=data + list(extra_inputs), overwrite=overwrite)


def prediction_writer(dataset: SegmentationDataset, folder: str | Path, info: DatasetInfo) -> PredictionHook:
    """Writes ``<stem>.png`` (class ids, uint8) and ``<stem>_color.png`` (palette) per image,
    each atomically (see ``check_prediction_outputs`` for what is refused first)."""
    folder = Path(folder)
    palette_bgr = np.zeros((256, 3), np.uint8)
    palette_bgr[: info.num_classes] = info.palette_array()[:, ::-1]

    def write(pred: np.ndarray, indices: list[int]) -> None:
        for mask, index in zip(pred, indices, strict=True):
            ids, colour = prediction_paths(dataset, folder, index)
            write_image(ids, mask.astype(np.uint8))
            write_image(colour, palette_bgr[mask.astype(np.uint8)])

    return write


# ---------------------------------------------------------------------------- CLI
def add_parser(subparsers) -> None:
    p = subparsers.add_parser("eval", help="mIoU / per-class IoU of a checkpoint on a dataset split",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--weights", help="checkpoint written by `eacnet train` (e.g. runs/x/best.pt)")
    which.add_argument("--model", choices=tuple(MODELS), metavar="NAME",
                       help="evaluate the packaged weights of this registry model")
    p.add_argument("--dataset", default="camvid", choices=DATASET_KINDS, help="default camvid")
    p.add_argument("--data-root", help=DATA_ROOT_HELP)
    p.add_argument("--split", default="val", help="val (default), test, train")
    p.add_argument("--limit", type=at_least(0), default=0, help="only the first N images (smoke runs)")
    add_resize(p, aliases=[Alias("--size", hxw, "eval's --size was HxW; --resize is WxH: --size 360x480 is "
                                               "--resize 480x360")], what="the images")
    add_batch_size(p, default=1)
    p.add_argument("--workers", type=at_least(0), default=2, help="DataLoader worker processes (default 2)")
    add_device(p)
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="the model and images cast to this type, as the Segmenter and the node run them "
                        "(auto: fp16 on CUDA; on the CPU fp32 with --backend torch, else the fastest of fp32/bf16/"
                        "int8 that agrees with fp32, as the node chooses; int8: a quantised model on the CPU)")
    p.add_argument("--backend", choices=BACKENDS,
                   help="torch (default; onnxruntime for --precision int8): batched, the network as trained; or "
                        "the Segmenter's torch_compiled, onnxruntime, openvino or auto (the node's default: chosen by "
                        "timing on the first image)")
    add_int8_calibration(p, default="the dataset root's train split")
    add_threads(p)
    p.add_argument("--json", type=Path, help="write {model, dataset, split, images, miou, pixel_acc, per_class} here")
    p.add_argument("--plot", type=Path, help="write a per-class IoU bar chart (PNG) here")
    add_out(p, "write <image>.png (class ids) and <image>_color.png per image into this folder (never a folder "
               "of the dataset)", aliases=[Alias("--save-predictions")], type=Path, metavar="DIR")
    add_overwrite(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it only shows on a terminal)")
    p.set_defaults(func=run)


def _load_weights(args: argparse.Namespace) -> tuple[dict, Path]:
    path = weights_for(args.model, args.weights)
    if path is None:
        raise missing_weights_error(args.model, "--weights")
    return load_checkpoint(path, expect_model=args.model), path


def run(args: argparse.Namespace) -> int:
    ckpt, weights = _load_weights(args)
    info = checkpoint_dataset(ckpt)
    root = default_data_root(args.dataset, args.data_root)
    size = args.resize if args.resize and args.resize != (0, 0) else None
    transform = EvalTransform(info.mean, info.std, size)
    dataset = build_dataset(args.dataset, root, args.split, limit=args.limit, transform=transform)
    if dataset.info.num_classes != info.num_classes:
        raise CheckpointError(f"{weights}: model has {info.num_classes} classes, dataset {args.dataset} has "
                              f"{dataset.info.num_classes}")
    check_prediction_outputs(dataset, args.out, args.overwrite, others=(args.json, args.plot), extra_inputs=(weights,))
    info = replace(info, ignore_index=dataset.info.ignore_index)
    device = torch.device("cpu") if args.precision == "int8" else resolve_device(args.device)  # int8: a CPU path
    precision = resolve_precision(args.precision, device)
    configure_torch(device, args.threads)
    model = model_from_checkpoint(ckpt, weights)
    segmenter, backend = None, args.backend or ("onnxruntime" if precision == "int8" else "torch")
    if backend != "torch":
        calibration = args.int8_calibration or (str(root) if precision == "int8" else "")
        height, width = size or (0, 0)  # images come resized already: the Segmenter knows the size at start-up
        options = SegmenterOptions(device=str(device), precision=args.precision, backend=backend,
                                   threads=args.threads, calibration_data=calibration, inference_height=height,
                                   inference_width=width)
        segmenter = Segmenter(model, ckpt["model"], info, options, weights=weights)
        model = segmenter_forward(segmenter)
    else:
        model = model.to(device, dtype=DTYPES[precision])
    hook = prediction_writer(dataset, args.out, info) if args.out else None
    loader = eval_loader(dataset, args.batch_size, args.workers, pin_memory=device.type == "cuda")
    print(f"eval: {ckpt['model']} ({weights}) on {dataset.name}, {len(dataset)} images, {device}, {precision}")
    try:
        result = evaluate_model(model, loader, info, device, progress=not args.no_progress, on_predictions=hook)
    except DatasetError as exc:  # raised inside a worker: keep the one line that names the file
        raise DatasetError.clean(exc) from None
    if segmenter is not None:
        print(f"eval: ran {segmenter.describe()}")
    _print_result(result, ckpt["model"], dataset.name)
    if args.json:
        write_json(args.json, report_json(result, ckpt["model"], args.dataset, args.split, str(weights)))
    if args.plot:
        plot_per_class(result.confusion, args.plot, f"{ckpt['model']} on {dataset.name}")
    return 0


def _print_result(result: EvalResult, model: str, name: str) -> None:
    print(result.confusion.table(title=model))
    cm = result.confusion
    print(f"{name}: mIoU {100 * cm.miou:.2f}%  pixel accuracy {100 * cm.pixel_accuracy:.2f}%  "
          f"images {result.images}  {result.images_per_s:.2f} images/s "
          f"(model {result.model_images_per_s:.2f} images/s)")
    if result.confusion.absent_classes:
        print(f"note: no labelled pixels for {', '.join(result.confusion.absent_classes)} in this split "
              "(their IoU counts as 0 in the mIoU)")
