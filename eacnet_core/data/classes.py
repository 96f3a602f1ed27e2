"""Class sets: names, palettes, ignore index and input normalisation of each dataset.

A checkpoint copies the fields of its ``DatasetInfo`` so inference never needs to know
which dataset a model came from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]  # RGB, one per class
    ignore_index: int
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # RGB, 0..255 units
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if len(self.class_names) != len(self.palette):
            raise ValueError(f"{self.name}: {len(self.class_names)} class names but {len(self.palette)} colours")
        if 0 <= self.ignore_index < len(self.class_names):
            raise ValueError(f"{self.name}: ignore index {self.ignore_index} is a real class id")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def palette_array(self) -> np.ndarray:
        """(num_classes, 3) uint8 RGB."""
        return np.asarray(self.palette, dtype=np.uint8).reshape(-1, 3)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["class_names"] = list(self.class_names)
        d["palette"] = [list(c) for c in self.palette]
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DatasetInfo:
        return cls(name=str(d["name"]), class_names=tuple(d["class_names"]),
                   palette=tuple(tuple(int(v) for v in c) for c in d["palette"]),
                   ignore_index=int(d["ignore_index"]), mean=tuple(float(v) for v in d["mean"]),
                   std=tuple(float(v) for v in d["std"]), extra=dict(d.get("extra", {})))


# CamVid 11-class (SegNet tutorial). Mean/std measured over the 367 training images.
CAMVID = DatasetInfo(
    name="camvid",
    class_names=("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                 "Pedestrian", "Bicyclist"),
    palette=((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
             (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)),
    ignore_index=11,
    mean=(105.03, 108.41, 110.33),
    std=(78.30, 79.46, 78.34),
)

# Cityscapes 19 train ids with the official colours (cityscapesscripts' labels.py).
# Mean/std: the DABNet reference values, converted to RGB.
CITYSCAPES = DatasetInfo(
    name="cityscapes",
    class_names=("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                 "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
                 "motorcycle", "bicycle"),
    palette=((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
             (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
             (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32)),
    ignore_index=255,
    mean=(73.16, 82.91, 72.39),
    std=(44.91, 46.15, 45.32),
)

DATASETS: dict[str, DatasetInfo] = {d.name: d for d in (CAMVID, CITYSCAPES)}


def generic(num_classes: int) -> DatasetInfo:
    """Anonymous class set for models built without a dataset (benchmarks, smoke tests):
    names ``class_<i>`` and a deterministic, well-spread palette."""
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, size=(num_classes, 3))
    return DatasetInfo(name=f"generic{num_classes}", class_names=tuple(f"class_{i}" for i in range(num_classes)),
                       palette=tuple(tuple(int(v) for v in c) for c in colours), ignore_index=255,
                       mean=CAMVID.mean, std=CAMVID.std)
