"""Shared test fixtures: tiny synthetic segmentation datasets in the three layouts the
loaders read (CamVid/SegNet, Cityscapes, plain folders), written into tmp_path.

Images are colour-coded by class (each class a fixed colour plus mild noise) on a grid
of 8x8 blocks, so a network can actually learn them in a few dozen iterations and the
alignment of image and label is checkable pixel by pixel.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from real_data import REAL_CAMVID

import eacnet_core.infer.segmenter  # noqa: F401 - see PACKAGE_LOGGERS
import eacnet_core.runtime  # noqa: F401
import eacnet_ros.bags.cli  # noqa: F401 (and with it bags.io, bags.eval)
from eacnet_core.checkpoint import make_checkpoint, save_atomic
from eacnet_core.data.classes import CAMVID, DatasetInfo
from eacnet_core.models import build_model

#: The package loggers, created (with the modules above) before any test module imports
#: `launch`: importing launch makes its LaunchLogger (propagate = False) the class of every
#: logger created after it, and caplog, listening on the root logger, would hear nothing.
PACKAGE_LOGGERS = [logging.getLogger(name) for name in ("eacnet_core", "eacnet_ros")]


#: The test files that take longest on a 2-core machine (seconds of one file run alone,
#: ``pytest --durations``; 2026-12), longest first, alternating files that mostly wait on ROS
#: processes and launches with files that keep a core busy, so the two workers tend to run
#: one of each. pytest-xdist's ``--dist loadfile`` hands each file whole to the next free
#: worker in collection order (``pytest_configure`` below keeps it from reordering by test
#: count), so these start first and the many short files fill in behind them: both workers
#: end together instead of one running a long file at the end while the other has
#: finished. Files not named keep their order, after these.
LONGEST_FIRST = (
    "test_node_real_process.py", "test_ros2_workflow.py", "test_inference.py", "test_node_real.py",
    "test_train.py", "test_bag_replay_real.py", "test_gpu_campaign.py", "test_node_ready_real.py",
    "test_campaign.py", "test_multi_camera_real.py", "test_gpu_bench_script.py", "test_dds_bench.py",
    "test_train_step.py", "test_node_malformed_real.py", "test_demo.py", "test_dds_soak.py", "test_confidence.py",
    "test_node_real_confidence.py", "test_openvino.py", "test_lifecycle_real.py", "test_quantize.py",
    "test_launch_real.py", "test_packaged_weights.py", "test_evaluate.py", "test_bags.py", "test_bench_export.py",
    "test_models.py", "test_compiled.py",
)


def pytest_configure(config):
    """With pytest-xdist, files go to the workers in LONGEST_FIRST's order, not sorted by
    how many tests each holds (a few-test file can be the longest)."""
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    """Longest files first (LONGEST_FIRST); the order within a file is kept."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(autouse=True)
def _same_random_state():
    """Every test starts from the same torch and NumPy random state, so what a test draws
    without a seed of its own (``torch.randn`` inputs, a model's initial weights) never
    depends on which tests ran before it on its worker. Python's ``random`` is left alone:
    the random ROS domains of the real-middleware tests come from it."""
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session", autouse=True)
def _private_user_cache(tmp_path_factory):
    """$XDG_CACHE_HOME in a temporary folder for the whole run (subprocesses inherit it):
    what the code under test caches there (backend/precision auto's remembered choices,
    int8 models of weights without a writable folder) never lands in the user's own cache,
    nor does a record left there by an earlier run decide a test's outcome. Tests that need
    a cache of their own still set one with monkeypatch."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("user-cache")))
        yield


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread for every test: these are tiny forward passes on a small shared
    CPU, where an OpenMP team contending with other processes made them up to 30x slower.
    OpenCV's thread count is restored too (loaders with workers switch its pool off)."""
    threads, cv2_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    cv2.setNumThreads(cv2_threads)


@pytest.fixture
def no_packaged_weights(monkeypatch, tmp_path):
    """Behave as an install without shipped weights (the untrained-model paths)."""
    empty = tmp_path / "no_packaged_weights"
    empty.mkdir()
    monkeypatch.setattr("eacnet_core.checkpoint.WEIGHTS_DIR", empty)
    return empty


def save_tiny_checkpoint(path: Path, model: str = "dabnet", info: DatasetInfo = CAMVID, seed: int = 0,
                         attention_gamma: float | None = None, **extra) -> Path:
    """A randomly initialised registry model saved as a checkpoint, the same weights for the
    same seed; ``extra`` goes into the checkpoint (epoch, metrics, config, ...).
    ``attention_gamma``: the attention's residual weight (0 at initialisation, where the
    attention is the identity), for tests that exercise the attention itself."""
    torch.manual_seed(seed)
    network = build_model(model, info.num_classes)
    if attention_gamma is not None:
        network.attention.gamma.data.fill_(attention_gamma)
    return save_atomic(make_checkpoint(model, network, info, **extra), path)


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """``save_tiny_checkpoint`` into tmp_path: ``tiny_checkpoint()`` is a CamVid dabnet,
    ``tiny_checkpoint("eacnet_erf", epoch=3)`` another model with extra fields."""

    def build(model: str = "dabnet", info: DatasetInfo = CAMVID, name: str = "", **extra) -> Path:
        return save_tiny_checkpoint(tmp_path / (name or f"{model}.pt"), model, info, **extra)

    return build


@pytest.fixture(scope="session")
def shared_checkpoint(tmp_path_factory) -> Path:
    """One CamVid dabnet checkpoint for the whole run, for tests that only read it."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("checkpoint") / "dabnet.pt")


@pytest.fixture
def no_camvid_anywhere(tmp_path, monkeypatch):
    """Nothing where the commands look for CamVid: no $EACNET_DATA, no ../shared beside the
    current folder (a fresh one under tmp_path) or beside the source tree. Returns tmp_path."""
    monkeypatch.delenv("EACNET_DATA", raising=False)
    monkeypatch.setattr("eacnet_core.data.roots.SOURCE_TREE", tmp_path / "site-packages")
    work = tmp_path / "proj" / "repo"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    return tmp_path


#: BGR colour per class id for synthetic images (distinct, far apart).
CLASS_BGR = np.array([[40, 40, 200], [40, 200, 40], [200, 40, 40], [200, 200, 40], [40, 200, 200],
                      [200, 40, 200], [120, 120, 120], [20, 90, 160], [160, 20, 90], [90, 160, 20],
                      [240, 240, 240]], dtype=np.uint8)


def synthetic_pair(rng: np.random.Generator, height: int = 32, width: int = 48, num_classes: int = 3,
                   block: int = 8, noise: int = 12, ignore: int | None = None,
                   ignore_fraction: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(BGR uint8 image, uint8 label): random class per block, colour = class colour + noise.
    With ``ignore``, a fraction of the blocks is labelled ``ignore`` (their colour is grey)."""
    gh, gw = -(-height // block), -(-width // block)
    grid = rng.integers(0, num_classes, size=(gh, gw)).astype(np.uint8)
    label = np.kron(grid, np.ones((block, block), np.uint8))[:height, :width]
    image = CLASS_BGR[label % len(CLASS_BGR)].astype(np.int16)
    image += rng.integers(-noise, noise + 1, size=image.shape, dtype=np.int16)
    if ignore is not None and ignore_fraction > 0:
        void = np.kron(rng.random((gh, gw)) < ignore_fraction, np.ones((block, block), bool))[:height, :width]
        label[void] = ignore
        image[void] = 128
    return np.clip(image, 0, 255).astype(np.uint8), label


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array), path
    return path


def make_camvid(root: Path, splits: dict[str, int] | None = None, height: int = 32, width: int = 48,
                num_classes: int = 11, list_files: bool = True, seed: int = 0) -> Path:
    """SegNet-layout CamVid: <split>/, <split>annot/ and <split>.txt with /SegNet/CamVid/ paths."""
    rng = np.random.default_rng(seed)
    for split, count in (splits or {"train": 4, "val": 2}).items():
        lines = []
        for i in range(count):
            image, label = synthetic_pair(rng, height, width, num_classes, ignore=11, ignore_fraction=0.1)
            name = f"{split}_{i:03d}.png"
            write_png(root / split / name, image)
            write_png(root / f"{split}annot" / name, label)
            lines.append(f"/SegNet/CamVid/{split}/{name} /SegNet/CamVid/{split}annot/{name}")
        if list_files:
            (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def make_cityscapes(root: Path, split: str = "train", cities: tuple[str, ...] = ("aachen", "bremen"),
                    per_city: int = 1, height: int = 32, width: int = 64, train_ids: bool = False,
                    seed: int = 0) -> list[tuple[Path, np.ndarray]]:
    """Official layout with labelIds drawn from all 34 ids (and labelTrainIds if asked).
    Returns (label path, raw ids) per image for checking the mapping."""
    rng = np.random.default_rng(seed)
    written = []
    for city in cities:
        for i in range(per_city):
            stem = f"{city}_{i:06d}_000019"
            image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
            ids = rng.integers(0, 34, size=(height, width), dtype=np.uint8)
            write_png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", image)
            label = write_png(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)
            written.append((label, ids))
    return written


def make_folder(root: Path, count: int = 4, height: int = 32, width: int = 48, num_classes: int = 3,
                splits: tuple[str, ...] = (), yaml_text: str | None = None, seed: int = 0, block: int = 8) -> Path:
    """images/ + labels/ (or <split>/images + <split>/labels) with a classes.yaml."""
    rng = np.random.default_rng(seed)
    names = [f"c{i}" for i in range(num_classes)]
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.yaml").write_text(yaml_text if yaml_text is not None else
                                       f"names: [{', '.join(names)}]\nignore_index: 255\n")
    for base in ([root / s for s in splits] or [root]):
        for i in range(count):
            image, label = synthetic_pair(rng, height, width, num_classes, block=block, ignore=255,
                                          ignore_fraction=0.05)
            write_png(base / "images" / f"img{i:03d}.jpg", image)
            write_png(base / "labels" / f"img{i:03d}.png", label)
    return root


@pytest.fixture
def synthetic():
    """Builders for tiny synthetic datasets (call them with a folder under tmp_path)."""
    return SimpleNamespace(pair=synthetic_pair, write_png=write_png, camvid=make_camvid, cityscapes=make_cityscapes,
                           folder=make_folder, class_bgr=CLASS_BGR, real_camvid=REAL_CAMVID)
