"""``eacnet labels from-colors`` / ``check`` and the checks of ``classes.yaml``: each bad
input gets its own named error, and no user file is overwritten."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from eacnet_core.data.datasets import DatasetError, folder_info
from eacnet_core.data.labels import check_labels, from_colours, read_classes
from eacnet_ros.cli import main as cli_main

NAMES = ["road", "car", "person"]
COLOURS = [[128, 64, 128], [0, 0, 142], [220, 20, 60]]


def _yaml(path: Path, **overrides) -> Path:
    spec = {"names": NAMES, "colors": COLOURS, "ignore_index": 255, **overrides}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec))
    return path


def _colour_mask(path: Path, ids: np.ndarray, extra: dict | None = None) -> Path:
    """An RGB mask of ``ids`` in COLOURS (``extra``: (row, col) -> another RGB colour), saved as PNG."""
    rgb = np.asarray(COLOURS, np.uint8)[ids]
    for (r, c), colour in (extra or {}).items():
        rgb[r, c] = colour
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


IDS = np.array([[0, 0, 1, 1], [2, 2, 0, 1], [0, 1, 2, 0]], np.uint8)


# ---------------------------------------------------------------------------- classes.yaml
@pytest.mark.parametrize("overrides, message", [
    ({"names": ["road", "car", "road"], "colors": COLOURS}, r"class name 'road' appears 2 times"),
    ({"colors": [[1, 2, 3], [1, 2, 3], [9, 9, 9]]}, r"classes 'road' and 'car' share the colour \[1, 2, 3\]"),
    ({"ignore_index": 1}, r"ignore index 1 is a real class id \('car'"),
    ({"colors": COLOURS[:2]}, r"3 class names but 2 colours"),
    ({"colors": [[1, 2], [3, 4, 5], [6, 7, 8]]}, r"colour of 'road' must be \[r, g, b\].*got \[1, 2\]"),
    ({"colors": [[1, 2, 300], [3, 4, 5], [6, 7, 8]]}, r"colour of 'road' must be .* values 0..255"),
    ({"ignore_index": "void"}, r"ignore_index must be an integer"),
])
def test_classes_yaml_problems_are_named(tmp_path, overrides, message):
    _yaml(tmp_path / "classes.yaml", **overrides)
    with pytest.raises(DatasetError, match=message):
        folder_info(tmp_path)
    with pytest.raises(DatasetError, match=message):
        read_classes(tmp_path / "classes.yaml")


def test_classes_yaml_names_every_problem_at_once(tmp_path):
    _yaml(tmp_path / "classes.yaml", names=["a", "a", "b"], colors=[[1, 1, 1], [1, 1, 1]], ignore_index=0)
    with pytest.raises(DatasetError) as info:
        folder_info(tmp_path)
    text = str(info.value)
    assert "'a' appears 2 times" in text and "3 class names but 2 colours" in text
    assert "share the colour" in text and "ignore index 0 is a real class id" in text


def test_from_colors_needs_colours_in_the_yaml(tmp_path):
    (tmp_path / "c.yaml").write_text("names: [a, b]\n")
    with pytest.raises(DatasetError, match="gives no 'colors'"):
        read_classes(tmp_path / "c.yaml")
    with pytest.raises(DatasetError, match="classes file not found"):
        read_classes(tmp_path / "missing.yaml")


# ---------------------------------------------------------------------------- from-colors
def test_from_colors_writes_class_ids(tmp_path):
    info = read_classes(_yaml(tmp_path / "c.yaml"))
    _colour_mask(tmp_path / "masks" / "a.png", IDS)
    written = from_colours(tmp_path / "masks", tmp_path / "labels", info)
    assert written == [tmp_path / "labels" / "a.png"]
    ids = cv2.imread(str(written[0]), cv2.IMREAD_UNCHANGED)
    assert ids.dtype == np.uint8 and np.array_equal(ids, IDS)


def test_from_colors_reads_rgba_masks(tmp_path):
    info = read_classes(_yaml(tmp_path / "c.yaml"))
    rgba = np.dstack([np.asarray(COLOURS, np.uint8)[IDS], np.full(IDS.shape, 255, np.uint8)])
    (tmp_path / "m").mkdir()
    cv2.imwrite(str(tmp_path / "m" / "a.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    from_colours(tmp_path / "m", tmp_path / "out", info)
    assert np.array_equal(cv2.imread(str(tmp_path / "out" / "a.png"), cv2.IMREAD_UNCHANGED), IDS)


def test_unknown_colour_names_file_colour_and_pixels_and_writes_nothing(tmp_path):
    info = read_classes(_yaml(tmp_path / "c.yaml"))
    _colour_mask(tmp_path / "masks" / "good.png", IDS)
    _colour_mask(tmp_path / "masks" / "bad.png", IDS, {(0, 0): [1, 2, 3], (0, 1): [1, 2, 3], (2, 3): [9, 9, 9]})
    with pytest.raises(DatasetError, match=r"bad\.png: colour\(s\) not in the classes: \[1, 2, 3\] \(2 px\), "
                                           r"\[9, 9, 9\] \(1 px\)") as info_:
        from_colours(tmp_path / "masks", tmp_path / "labels", info)
    assert "good.png" not in str(info_.value) and "--unknown-to-ignore" in str(info_.value)
    assert not (tmp_path / "labels").exists()  # nothing written, not even the good mask
    from_colours(tmp_path / "masks", tmp_path / "labels", info, unknown_to_ignore=True)
    ids = cv2.imread(str(tmp_path / "labels" / "bad.png"), cv2.IMREAD_UNCHANGED)
    assert ids[0, 0] == ids[0, 1] == ids[2, 3] == 255 and ids[1, 0] == 2


def test_from_colors_never_overwrites(tmp_path):
    info = read_classes(_yaml(tmp_path / "c.yaml"))
    _colour_mask(tmp_path / "masks" / "a.png", IDS)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.png").write_bytes(b"mine")
    with pytest.raises(ValueError, match=r"labels/a.png exists; pass --overwrite"):
        from_colours(tmp_path / "masks", tmp_path / "labels", info)
    assert (tmp_path / "labels" / "a.png").read_bytes() == b"mine"
    from_colours(tmp_path / "masks", tmp_path / "labels", info, overwrite=True)
    assert np.array_equal(cv2.imread(str(tmp_path / "labels" / "a.png"), cv2.IMREAD_UNCHANGED), IDS)
    with pytest.raises(ValueError, match="is the input folder"):  # in place: never, even with --overwrite
        from_colours(tmp_path / "masks", tmp_path / "masks", info, overwrite=True)
    assert np.array_equal(cv2.imread(str(tmp_path / "masks" / "a.png"))[..., ::-1][0, 0], COLOURS[0])


def test_cli_from_colors(tmp_path, capsys):
    _yaml(tmp_path / "classes.yaml")
    _colour_mask(tmp_path / "masks" / "a.png", IDS, {(0, 0): [5, 5, 5]})
    args = ["labels", "from-colors", str(tmp_path / "masks"), str(tmp_path / "labels"), "--classes",
            str(tmp_path / "classes.yaml")]
    assert cli_main(args) == 2
    assert "a.png: colour(s) not in the classes: [5, 5, 5] (1 px)" in capsys.readouterr().err
    assert cli_main(args + ["--unknown-to-ignore"]) == 0
    assert "wrote 1 class-id mask(s)" in capsys.readouterr().out


# ---------------------------------------------------------------------------- check
def _dataset(root: Path, count: int = 2) -> Path:
    _yaml(root / "classes.yaml")
    for i in range(count):
        name = f"f{i}"
        (root / "train" / "images").mkdir(parents=True, exist_ok=True)
        (root / "train" / "labels").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "train" / "images" / f"{name}.jpg"), np.zeros((3, 4, 3), np.uint8))
        cv2.imwrite(str(root / "train" / "labels" / f"{name}.png"), IDS)
    return root


def test_check_passes_and_prints_class_shares(tmp_path, capsys):
    root = _dataset(tmp_path / "d")
    assert cli_main(["labels", "check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "2 image/label pairs, 3 classes" in out and out.rstrip().endswith("ok")
    assert "0 road    41.67%  (10 px)" in out and "2 person  25.00%  (6 px)" in out


@pytest.mark.parametrize("damage, message", [
    (lambda r: cv2.imwrite(str(r / "train/labels/f1.png"), np.zeros((4, 4), np.uint8)),
     r"f1.png: 4x4, but its image f1.jpg is 4x3"),
    (lambda r: cv2.imwrite(str(r / "train/labels/f1.png"), np.array([[0, 7, 9, 255]] * 3, np.uint8)),
     r"f1.png: values 7 \(3 px\), 9 \(3 px\) are neither class ids 0..2 nor the ignore index 255"),
    (lambda r: cv2.imwrite(str(r / "train/labels/f1.png"), np.zeros((3, 4, 3), np.uint8)),
     r"f1.png: a colour image \(3 channels\).*from-colors"),
    (lambda r: (r / "train/labels/f1.png").unlink(), r"f1.jpg: no label"),
    (lambda r: (r / "train/labels/f1.png").write_bytes(b"junk"), r"f1.png: not a readable image"),
])
def test_check_names_each_bad_file(tmp_path, capsys, damage, message):
    root = _dataset(tmp_path / "d")
    damage(root)
    report = check_labels(root)
    assert not report.ok
    assert any(re.search(message, p) for p in report.problems), report.problems
    assert cli_main(["labels", "check", str(root)]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_check_fails_when_a_class_appears_nowhere(tmp_path, capsys):
    root = _dataset(tmp_path / "d")
    for label in (root / "train" / "labels").iterdir():
        cv2.imwrite(str(label), np.where(IDS == 2, 255, IDS).astype(np.uint8))
    report = check_labels(root)
    assert report.problems == [] and report.missing_classes == ["person"]
    assert cli_main(["labels", "check", str(root)]) == 1
    assert "classes that appear in no label: person" in capsys.readouterr().out
