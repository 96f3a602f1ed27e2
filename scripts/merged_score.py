"""Score a model on a regrouped folder dataset by merging its own classes into the new
ones: a shipped 11-class CamVid model judged on the 5-class grouping (docs/RESULTS.md, "your
own classes"). The class map is the one ``eacnet train --class-map`` reads (new class: [old
classes]); a prediction of an old class that no new class lists counts as wrong.

    python scripts/merged_score.py --weights eacnet_dab --data-root /tmp/camvid5 \\
        --class-map /tmp/camvid5/class_map.yaml --split val
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from eacnet_core.checkpoint import checkpoint_dataset, load_checkpoint
from eacnet_core.data.datasets import build_dataset, folder_info
from eacnet_core.evaluate.metrics import ConfusionMatrix
from eacnet_core.infer.segmenter import Segmenter, SegmenterOptions
from eacnet_core.train.init_from import init_source, read_class_map


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="checkpoint or packaged model name")
    p.add_argument("--data-root", required=True, help="folder dataset with the new classes")
    p.add_argument("--class-map", required=True, help="YAML new class: [old classes]")
    p.add_argument("--split", default="val")
    args = p.parse_args(argv)
    path = init_source(args.weights)
    old = checkpoint_dataset(load_checkpoint(path))
    new = folder_info(args.data_root)
    groups = read_class_map(args.class_map, old.class_names, new.class_names)
    table = np.full(old.num_classes, new.num_classes, dtype=np.int64)  # unlisted: a class no label has
    for new_name, olds in groups.items():
        for name in olds:
            table[old.class_names.index(name)] = new.class_names.index(new_name)
    segmenter = Segmenter.from_checkpoint(path, SegmenterOptions(device="cpu", backend="torch", precision="fp32"))
    data = build_dataset("folder", args.data_root, args.split)
    matrix = ConfusionMatrix(new.num_classes + 1, new.ignore_index)
    for i in range(len(data)):
        matrix.update(table[segmenter.segment(data.read_image(i))], data.read_label(i))
    iou = matrix.per_class_iou[: new.num_classes]
    result = {"weights": str(path), "split": args.split, "images": len(data),
              "miou": float(iou.mean()), "per_class": dict(zip(new.class_names, map(float, iou), strict=True))}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
