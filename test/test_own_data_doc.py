"""docs/OWN_DATA.md, end to end at tiny size: its YAML blocks become the files, and every
command of its bash blocks runs as written (the training with tiny-size options appended,
the ones that run a model pinned to the CPU and torch): colour masks -> labels
from-colors -> labels check -> train --init-from eacnet_dab --class-map --recipe finetune
-> eval, segment, make-bag, bag-eval -> the node's model and LabelInfo from the launch line."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from eacnet_core.checkpoint import CheckpointError, load_checkpoint
from eacnet_ros.cli import main as cli_main
from eacnet_ros.node.model import label_map, load_segmenter
from eacnet_ros.node.params import NodeConfig

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "OWN_DATA.md"
#: Appended to the doc's commands: tiny size, and no engine/precision search.
TINY = {"train": ["--epochs", "1", "--batch-size", "2", "--crop-size", "48x32", "--workers", "0", "--no-progress",
                  "--no-tensorboard", "--threads", "1"],
        "eval": ["--device", "cpu", "--backend", "torch", "--precision", "fp32", "--workers", "0", "--no-progress"],
        "segment": ["--device", "cpu", "--backend", "torch", "--precision", "fp32", "--no-progress"],
        "bag-eval": ["--device", "cpu", "--backend", "torch", "--precision", "fp32"]}
NODE_RUNTIME = {"device": "cpu", "backend": "torch", "precision": "fp32", "threads": 1}


def _blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", DOC.read_text(), flags=re.S)


def _raw_dataset(root: Path, classes: dict, rng: np.random.Generator) -> None:
    """raw/<split>/images + raw/<split>/masks: random class blocks, masks in the YAML's colours."""
    colours = np.asarray(classes["colors"], np.uint8)
    for split, count in (("train", 4), ("val", 2)):
        for i in range(count):
            ids = np.kron(rng.integers(0, len(colours), (4, 6)), np.ones((8, 8), np.int64))
            ids[:8, :8] = i % len(colours)
            ids[-8:, -8:] = np.arange(len(colours)).repeat(2)[:8]  # every class in every split
            image = (colours[ids] // 2 + rng.integers(0, 60, (*ids.shape, 3))).astype(np.uint8)
            for folder, array in (("images", image), ("masks", colours[ids])):
                (root / "raw" / split / folder).mkdir(parents=True, exist_ok=True)
                assert cv2.imwrite(str(root / "raw" / split / folder / f"{i:04d}.png"), array[..., ::-1])


def _run(line: str, cwd: Path, capsys) -> str:
    words = shlex.split(line.replace("$PWD", str(cwd)))
    if words[0] == "eacnet":
        words = words[1:] + TINY.get(words[1], [])
        assert cli_main(words) == 0, (line, capsys.readouterr())
        return capsys.readouterr().out
    assert words[0] in ("mkdir", "cp"), f"the doc runs {words[0]!r}: teach this test to run it"
    subprocess.run(words, cwd=cwd, check=True)
    return ""


def test_own_data_doc_end_to_end(tmp_path, monkeypatch, capsys):
    classes_text, map_text = _blocks("yaml")
    classes = yaml.safe_load(classes_text)
    (tmp_path / "classes.yaml").write_text(classes_text)
    (tmp_path / "class_map.yaml").write_text(map_text)
    _raw_dataset(tmp_path, classes, np.random.default_rng(0))
    monkeypatch.chdir(tmp_path)
    lines = [line.strip() for block in _blocks("bash") for line in block.splitlines() if line.strip()]
    launch = [line for line in lines if line.startswith("ros2 launch")]
    assert len(launch) == 1
    printed = {}
    for line in lines:
        if not line.startswith("ros2 "):
            printed[line] = _run(line, tmp_path, capsys)

    # labels: ids as the colours say, and the check passed
    check = next(out for line, out in printed.items() if "labels check" in line)
    assert check.rstrip().endswith("ok") and "6 image/label pairs, 5 classes" in check
    # training: the packaged model, moved to the 5 classes through the class map, with the recipe
    train = next(out for line, out in printed.items() if line.startswith("eacnet train"))
    assert "eacnet_dab_camvid.pt (names matched directly; classes 11 -> 5)" in train
    assert "person <- Pedestrian, Bicyclist" in train and "recipe finetune: 4 training images" in train
    run = tmp_path / "runs" / "mine"
    ckpt = load_checkpoint(run / "best.pt")
    assert ckpt["dataset"]["class_names"] == classes["names"] and ckpt["dataset"]["palette"] == classes["colors"]
    assert "## Validation" in (run / "model_card.md").read_text()
    # segment: colour masks in the YAML's palette
    bgr = {tuple(c[::-1]) for c in classes["colors"]}
    colour_files = sorted((tmp_path / "seg_out").glob("*_color.png"))
    assert len(colour_files) == 2
    for path in colour_files:
        assert {tuple(c) for c in np.unique(cv2.imread(str(path)).reshape(-1, 3), axis=0)} <= bgr
    # bag-eval: the user's class names in its JSON
    result = json.loads((tmp_path / "mine_eval.json").read_text())
    assert list(result["per_class"]) == classes["names"] and result["evaluated"] == 2

    # the node, as the launch line configures it: the user's ids, names and colours
    words = shlex.split(launch[0].replace("$PWD", str(tmp_path)))
    assert words[:4] == ["ros2", "launch", "eacnet_ros", "segment.launch.py"]
    given = dict(w.split(":=", 1) for w in words[4:])
    declared = set(re.findall(r'Argument\("(\w+)"', (REPO / "launch" / "segment.launch.py").read_text()))
    assert set(given) <= declared, set(given) - declared
    segmenter = load_segmenter(NodeConfig.from_values({**given, **NODE_RUNTIME}), warn=print)
    assert label_map(segmenter) == list(enumerate(classes["names"]))
    mask = np.arange(5, dtype=np.uint8).reshape(1, 5)
    assert segmenter.colorize(mask)[0].tolist() == [c[::-1] for c in classes["colors"]]
    # another network than the checkpoint's: one clear error naming the pair it needs
    with pytest.raises(CheckpointError, match=r"found 'eacnet_dab' \(5 classes\); this file runs as "
                                              r"backbone:=dabnet attention:=eac \(asked: backbone:=erfnet"):
        load_segmenter(NodeConfig.from_values({**given, **NODE_RUNTIME, "backbone": "erfnet"}), warn=print)
    assert os.path.isfile(given["weights"])
