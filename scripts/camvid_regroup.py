"""Write CamVid regrouped into fewer classes as a folder dataset (``eacnet train --dataset folder``).

The measurement in docs/RESULTS.md ("your own classes") uses the 5-class grouping below:
road, sidewalk, vehicle, person, other; CamVid's void stays ignored. Images can be resized
(``--size WxH``) and the train split subsampled (``--train-images N``, evenly spaced) so
the runs fit a CPU budget. The output is data: write it outside the repository.

    python scripts/camvid_regroup.py --out /tmp/camvid5 --size 240x180 --train-images 96
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import yaml

from eacnet_core.data.classes import CAMVID
from eacnet_core.data.datasets import camvid_pairs
from eacnet_core.data.roots import default_data_root

#: new class -> the CamVid classes it merges (road, sidewalk, vehicle, person, other).
GROUPS = {
    "road": ["Road"],
    "sidewalk": ["Pavement"],
    "vehicle": ["Car"],
    "person": ["Pedestrian", "Bicyclist"],
    "other": ["Sky", "Building", "Pole", "Tree", "SignSymbol", "Fence"],
}
COLOURS = {"road": [128, 64, 128], "sidewalk": [244, 35, 232], "vehicle": [0, 0, 142], "person": [220, 20, 60],
           "other": [70, 70, 70]}
IGNORE = 255


def lookup() -> np.ndarray:
    """CamVid id (0..255) -> new id; void and anything unlisted -> IGNORE."""
    table = np.full(256, IGNORE, dtype=np.uint8)
    for new_id, olds in enumerate(GROUPS.values()):
        for old in olds:
            table[CAMVID.class_names.index(old)] = new_id
    return table


def write_split(root: Path, split: str, out: Path, size: tuple[int, int] | None, count: int) -> int:
    pairs = camvid_pairs(root, split)
    if count and count < len(pairs):
        pairs = [pairs[i] for i in np.linspace(0, len(pairs) - 1, count).round().astype(int)]
    (out / split / "images").mkdir(parents=True, exist_ok=True)
    (out / split / "labels").mkdir(parents=True, exist_ok=True)
    table = lookup()
    for image_path, label_path in pairs:
        image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        label = table[cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)]
        if size:
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
        cv2.imwrite(str(out / split / "images" / image_path.name), image)
        cv2.imwrite(str(out / split / "labels" / (image_path.stem + ".png")), label)
    return len(pairs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", help="CamVid folder (default: as `eacnet train` finds it)")
    p.add_argument("--out", required=True, help="new, empty folder for the regrouped dataset")
    p.add_argument("--size", help="resize images and labels to WxH (default: keep 480x360)")
    p.add_argument("--train-images", type=int, default=0, help="evenly spaced subset of train (default: all)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        print(f"{out}: exists and is not empty; choose a new folder", file=sys.stderr)
        return 2
    size = tuple(int(v) for v in args.size.lower().split("x")) if args.size else None
    root = default_data_root("camvid", args.data_root)
    out.mkdir(parents=True, exist_ok=True)
    spec = {"name": "camvid5", "names": list(GROUPS), "colors": [COLOURS[n] for n in GROUPS],
            "ignore_index": IGNORE, "mean": list(CAMVID.mean), "std": list(CAMVID.std)}
    (out / "classes.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    (out / "class_map.yaml").write_text(yaml.safe_dump(GROUPS, sort_keys=False))
    for split, count in (("train", args.train_images), ("val", 0)):
        print(f"{split}: {write_split(root, split, out, size, count)} images -> {out / split}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
