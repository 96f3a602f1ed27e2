"""Fine-tuning on a team's own classes: ``--init-from`` across class counts (fresh head,
``--class-map``), packaged model names, the ``finetune`` recipe and the model card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from eacnet_core.checkpoint import CheckpointError, load_checkpoint, make_checkpoint
from eacnet_core.data.classes import CAMVID, DatasetInfo, generic
from eacnet_core.models import build_model
from eacnet_core.train.config import RECIPES, TrainConfig
from eacnet_core.train.init_from import init_from, init_source, packaged_sources, read_class_map
from eacnet_core.train.loop import Trainer, train
from eacnet_ros.cli import main as cli_main

#: The 5-class grouping of CamVid the docs use.
FIVE = ("road", "sidewalk", "vehicle", "person", "other")
FIVE_MAP = {"road": ["Road"], "sidewalk": ["Pavement"], "vehicle": ["Car"], "person": ["Pedestrian", "Bicyclist"],
            "other": ["Sky", "Building", "Pole", "Tree", "SignSymbol", "Fence"]}
#: Tensors sized by the class count, per model (classifier + the attention's C x C convs).
CLASS_SIZED = {
    "eacnet_dab": {"backbone.classifier.weight", "attention.query.weight", "attention.query.bias",
                   "attention.key.weight", "attention.key.bias", "attention.value.weight", "attention.value.bias"},
    "dabnet": {"classifier.weight"},
    "erfnet_enc": {"encoder.output_conv.weight", "encoder.output_conv.bias"},
}


def _camvid_source(tmp_path: Path, name: str) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(3)
    model = build_model(name, CAMVID.num_classes)
    path = tmp_path / f"{name}_camvid.pt"
    torch.save(make_checkpoint(name, model, CAMVID), path)
    return path, model


def _five(names=FIVE) -> DatasetInfo:
    return DatasetInfo("five", tuple(names), generic(len(names)).palette, 255)


@pytest.mark.parametrize("name", sorted(CLASS_SIZED))
def test_other_class_count_loads_all_but_the_class_sized_tensors(tmp_path, name):
    path, src = _camvid_source(tmp_path, name)
    torch.manual_seed(9)
    model = build_model(name, 5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = init_from(model, path, FIVE)
    assert set(report.fresh) == CLASS_SIZED[name] and report.mapped == []
    assert report.classes == "11 -> 5" and report.new == [] and report.unexpected == []
    state, src_state = model.state_dict(), src.state_dict()
    for key in report.loaded:
        assert torch.equal(state[key], src_state[key]), key
    for key in report.fresh:  # left as the new model built them
        assert torch.equal(state[key], before[key]), key
    text = report.format()
    assert "classes 11 -> 5" in text and "(class-sized)" in text and "loaded" in text
    assert sorted(report.head) == sorted(CLASS_SIZED[name])


def test_class_map_rows_start_from_the_mean_of_the_old_rows(tmp_path):
    path, src = _camvid_source(tmp_path, "eacnet_dab")
    model = build_model("eacnet_dab", 5)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    partial = {k: v for k, v in FIVE_MAP.items() if k != "sidewalk"}  # sidewalk stays fresh
    report = init_from(model, path, FIVE, partial)
    assert set(report.mapped) == CLASS_SIZED["eacnet_dab"] and report.fresh == []
    assert "person <- Pedestrian, Bicyclist" in report.format() and "sidewalk <- (fresh)" in report.format()
    old, new = src.state_dict(), model.state_dict()
    idx = {n: [CAMVID.class_names.index(o) for o in olds] for n, olds in partial.items()}
    w_old, w_new = old["backbone.classifier.weight"], new["backbone.classifier.weight"]
    assert torch.allclose(w_new[3], w_old[idx["person"]].mean(0))
    assert torch.allclose(w_new[4], w_old[idx["other"]].mean(0))
    assert torch.equal(w_new[1], fresh["backbone.classifier.weight"][1])
    # the attention's C x C conv: rows averaged, columns summed over the mapped old classes
    q_old, q_new = old["attention.query.weight"][:, :, 0, 0], new["attention.query.weight"][:, :, 0, 0]
    expect = q_old[idx["person"]][:, idx["other"]].sum(1).mean(0)
    assert torch.allclose(q_new[3, 4], expect)
    assert torch.equal(q_new[1], fresh["attention.query.weight"][1, :, 0, 0])  # fresh row
    assert torch.equal(q_new[:, 1], fresh["attention.query.weight"][:, 1, 0, 0])  # fresh column
    assert torch.allclose(new["attention.value.bias"][2], old["attention.value.bias"][idx["vehicle"]].mean())


def test_class_map_reproduces_merged_logits_of_the_classifier(tmp_path):
    """With every old class mapped, a new logit is the mean of its old classes' logits."""
    path, src = _camvid_source(tmp_path, "dabnet")
    model = build_model("dabnet", 5)
    init_from(model, path, FIVE, FIVE_MAP)
    src.eval(), model.eval()
    feats = {}
    for net in (src, model):
        net.classifier.register_forward_hook(lambda m, i, o, net=net: feats.__setitem__(id(net), o))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        src(x), model(x)
    old, new = feats[id(src)], feats[id(model)]
    person = [CAMVID.class_names.index(o) for o in FIVE_MAP["person"]]
    assert torch.allclose(new[:, 3], old[:, person].mean(1), atol=1e-5)


def test_erfnet_decoder_transposed_conv_maps_its_output_dim(tmp_path):
    path, src = _camvid_source(tmp_path, "erfnet")
    model = build_model("erfnet", 5)
    report = init_from(model, path, FIVE, FIVE_MAP)
    assert "decoder.output_conv.weight" in report.mapped
    old, new = src.state_dict()["decoder.output_conv.weight"], model.state_dict()["decoder.output_conv.weight"]
    assert new.shape[1] == 5 and torch.allclose(new[:, 0], old[:, CAMVID.class_names.index("Road")])


def test_other_shape_mismatch_is_still_an_error(tmp_path):
    # a tensor that differs in a non-class dimension (a different network's layer of the same name)
    src = build_model("eacnet_dab", 11).state_dict()
    src["backbone.init_conv.0.0.weight"] = torch.zeros(7, 3, 3, 3)
    torch.save(make_checkpoint("eacnet_dab", build_model("eacnet_dab", 11), CAMVID) | {"state_dict": src},
               tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match=r"init_conv.*\(7, 3, 3, 3\).*not explained by the class count"):
        init_from(build_model("eacnet_dab", 5), tmp_path / "odd.pt", FIVE)


def test_class_map_errors_name_what_is_wrong(tmp_path):
    path, _ = _camvid_source(tmp_path, "dabnet")
    cases = {
        "vehicle: [Truck]\n": r"'vehicle' maps from 'Truck', not among the old classes",
        "bus: [Car]\n": r"'bus' is not one of the new classes \(road, sidewalk",
        "vehicle: []\n": r"'vehicle' needs a non-empty list",
        "- Car\n": r"a class map is a mapping",
        "vehicle: [Car\n": r"not valid YAML",
    }
    for text, message in cases.items():
        (tmp_path / "map.yaml").write_text(text)
        with pytest.raises(ValueError, match=message):
            init_from(build_model("dabnet", 5), path, FIVE, tmp_path / "map.yaml")
    with pytest.raises(ValueError, match="--class-map file not found"):
        init_from(build_model("dabnet", 5), path, FIVE, tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="has the run's class count"):
        init_from(build_model("dabnet", 11), path, CAMVID.class_names, {"Sky": ["Sky"]})
    (tmp_path / "map.yaml").write_text("vehicle: Car\n")  # one name may stand alone
    assert read_class_map(tmp_path / "map.yaml", CAMVID.class_names, FIVE) == {"vehicle": ["Car"]}


def test_bare_state_dict_with_another_class_count_stays_an_error(tmp_path):
    torch.save(build_model("dabnet", 11).state_dict(), tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="shape mismatch.*different number of classes"):
        init_from(build_model("dabnet", 5), tmp_path / "bare.pt", FIVE)


def test_packaged_model_names_resolve_to_the_shipped_weights(tmp_path, monkeypatch):
    assert {"eacnet_dab", "eacnet_erf", "dabnet", "erfnet_enc", "eacnet_erf_nl"} <= set(packaged_sources())
    assert init_source("eacnet_dab").name == "eacnet_dab_camvid.pt"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=r"nope.pt: --init-from checkpoint file not found.*packaged model: "
                                              r"dabnet, eacnet_dab"):
        init_source("nope.pt")
    (tmp_path / "eacnet_dab").write_bytes(b"")  # a file of that name wins over the packaged model
    assert init_source("eacnet_dab") == Path("eacnet_dab")
    report = init_from(build_model("dabnet", 5), "dabnet", FIVE, FIVE_MAP)
    assert report.source.endswith("dabnet_camvid.pt") and report.mapped == ["classifier.weight"]


# ---------------------------------------------------------------------------- the recipe
def test_finetune_recipe_sizes_the_schedule_by_image_count():
    recipe = RECIPES["finetune"]
    assert recipe.epochs_for(10**6) == recipe.epochs_range[0]
    assert recipe.epochs_for(1) == recipe.epochs_range[1]
    assert recipe.epochs_for(300) == -(-recipe.images_seen // 300)
    values = recipe.overlay({"lr": 1e-3, "epochs": 3})
    assert values["lr"] == 1e-3 and values["epochs"] == 3 and values["recipe"] == "finetune"
    assert values["head_lr_mult"] > 1 and values["warmup_iters"] == -1
    cfg = recipe.sized(TrainConfig(**{**recipe.overlay({}), "model": "dabnet", "out": "x"}), 300, 38)
    assert cfg.epochs == recipe.epochs_for(300) and cfg.warmup_iters > 0


def test_recipe_and_class_map_validation():
    with pytest.raises(ValueError, match="--epochs"):
        TrainConfig(model="dabnet", out="x", epochs=0).validate()  # 0 epochs only mean "sized" with a recipe
    with pytest.raises(ValueError, match="--class-map needs --init-from"):
        TrainConfig(model="dabnet", out="x", class_map="m.yaml").validate()
    with pytest.raises(ValueError, match="--recipe must be one of finetune"):
        TrainConfig(model="dabnet", out="x", recipe="fast").validate()


def test_head_trains_at_its_own_rate():
    from eacnet_core.train.parts import build_optimizer

    model = build_model("eacnet_dab", 5)
    cfg = TrainConfig(model="eacnet_dab", out="x", lr=1e-4, head_lr_mult=10.0)
    head = sorted(CLASS_SIZED["eacnet_dab"])
    groups = build_optimizer(cfg, model, head=head).param_groups
    assert [g["lr"] for g in groups] == [pytest.approx(1e-4), pytest.approx(1e-3)]
    assert any(p is model.attention.query.weight for p in groups[1]["params"])
    assert any(p is model.attention.gamma for p in groups[0]["params"])  # loaded: the lower rate
    assert len(build_optimizer(TrainConfig(model="eacnet_dab", out="x", lr=1e-4), model, head=head)
               .param_groups) == 1  # head_lr_mult 1: one group, as before


def _five_class_folder(synthetic, root: Path) -> Path:
    spec = {"names": list(FIVE), "colors": [[128, 64, 128], [244, 35, 232], [0, 0, 142], [220, 20, 60],
                                            [70, 70, 70]], "ignore_index": 255}
    return synthetic.folder(root, count=4, num_classes=5, splits=("train", "val"), yaml_text=yaml.safe_dump(spec))


def test_cli_finetune_from_other_classes_with_class_map(tmp_path, synthetic, capsys):
    root = _five_class_folder(synthetic, tmp_path / "data")
    source, _ = _camvid_source(tmp_path, "dabnet")
    (tmp_path / "map.yaml").write_text(yaml.safe_dump(FIVE_MAP))
    out = tmp_path / "run"
    rc = cli_main(["train", "--model", "dabnet", "--dataset", "folder", "--data-root", str(root), "--out", str(out),
                   "--init-from", str(source), "--class-map", str(tmp_path / "map.yaml"), "--recipe", "finetune",
                   "--epochs", "1", "--batch-size", "2", "--crop-size", "48x32", "--workers", "0", "--no-progress",
                   "--no-tensorboard"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "classes 11 -> 5" in text and "class map     1: classifier.weight" in text
    assert "recipe finetune: 4 training images -> 1 epochs" in text and "(fresh: 1 tensors)" in text
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["num_classes"] == 5 and ckpt["dataset"]["class_names"] == list(FIVE)
    cfg = ckpt["config"]
    assert cfg["recipe"] == "finetune" and cfg["class_map"].endswith("map.yaml") and cfg["warmup_iters"] >= 1
    assert cfg["head_lr_mult"] == RECIPES["finetune"].defaults["head_lr_mult"]
    assert ckpt["head_params"] == ["classifier.weight"]
    groups = ckpt["optimizer"]["param_groups"]
    assert groups[1]["initial_lr"] == pytest.approx(10 * groups[0]["initial_lr"])


def test_finetune_run_resumes_with_its_head_group(tmp_path, synthetic):
    root = _five_class_folder(synthetic, tmp_path / "data")
    source, _ = _camvid_source(tmp_path, "dabnet")
    base = dict(model="dabnet", dataset="folder", data_root=str(root), out=str(tmp_path / "run"), batch_size=2,
                crop=(32, 48), workers=0, threads=1, progress=False, tensorboard=False, loss="ce", val_every=0)
    cfg = TrainConfig(**{**RECIPES["finetune"].overlay({"epochs": 1, "init_from": str(source)}), **base})
    train(cfg, log=lambda _: None)
    trainer = Trainer(TrainConfig(**{**base, "epochs": 2}), resume=True, log=lambda _: None)
    assert trainer.head == ["classifier.weight"] and len(trainer.optimizer.param_groups) == 2
    assert trainer.cfg.recipe == "finetune" and trainer.cfg.epochs == 2


def test_cli_without_class_names_in_source_keeps_old_behaviour(tmp_path, synthetic, capsys):
    root = _five_class_folder(synthetic, tmp_path / "data")
    torch.save(build_model("dabnet", 11).state_dict(), tmp_path / "bare.pt")
    rc = cli_main(["train", "--model", "dabnet", "--dataset", "folder", "--data-root", str(root), "--out",
                   str(tmp_path / "run"), "--init-from", str(tmp_path / "bare.pt"), "--epochs", "1",
                   "--batch-size", "2", "--crop-size", "48x32", "--workers", "0", "--no-progress"])
    assert rc == 2 and "shape mismatch" in capsys.readouterr().err


def test_run_writes_a_model_card(tmp_path, synthetic):
    root = _five_class_folder(synthetic, tmp_path / "data")
    source, _ = _camvid_source(tmp_path, "eacnet_dab")
    (tmp_path / "map.yaml").write_text(yaml.safe_dump(FIVE_MAP))
    out = tmp_path / "run"
    cfg = TrainConfig(**{**RECIPES["finetune"].overlay({"epochs": 2}), "model": "eacnet_dab", "dataset": "folder",
                         "data_root": str(root), "out": str(out), "init_from": str(source),
                         "class_map": str(tmp_path / "map.yaml"), "batch_size": 2, "crop": (32, 48), "workers": 0,
                         "threads": 1, "progress": False, "tensorboard": False, "loss": "ce", "val_every": 1})
    train(cfg, log=lambda _: None)
    card = (out / "model_card.md").read_text()
    best = load_checkpoint(out / "best.pt")
    assert "`eacnet_dab` with 5 classes" in card and "4 training images (split `train`)" in card
    assert f"`{source}` (`--init-from`), class-sized rows from the class map" in card
    assert "- recipe: finetune" in card and "- head-lr-mult: 10.0" in card and "2 of 2 epochs done" in card
    assert "- crop: 48x32 (WxH)" in card
    assert f"best.pt: epoch {best['epoch']}, val mIoU {100 * best['metrics']['val_miou']:.2f}%" in card
    for i, name in enumerate(FIVE):
        iou = 100 * best["metrics"]["val_per_class"][name]
        assert f"| {i} | {name} | " in card and f"| {iou:.1f} |" in card
    assert f"backbone:=dabnet attention:=eac weights:={(out / 'best.pt').resolve()}" in card


def test_same_class_count_with_other_names_is_noted(tmp_path):
    path, _ = _camvid_source(tmp_path, "dabnet")
    names = [f"mine{i}" for i in range(11)]
    report = init_from(build_model("dabnet", 11), path, names)
    assert report.fresh == [] and "classifier.weight" in report.loaded
    assert "note: same class count, other names: the classifier loads as trained for Sky" in report.format()
    assert "note" not in init_from(build_model("dabnet", 11), path, CAMVID.class_names).format()


def test_train_help_describes_the_recipe(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["train", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "finetune: a trained model moved to new images" in text and "5% of the iterations" in text
    assert "--class-map" in text and "packaged model (dabnet, eacnet_dab" in text


# ---------------------------------------------------------------------------- the measurement's scripts
def _script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_camvid_regroup_and_merged_score(tmp_path, synthetic, tiny_checkpoint, capsys):
    import cv2
    import numpy as np

    camvid = synthetic.camvid(tmp_path / "CamVid", {"train": 4, "val": 2})
    regroup = _script("camvid_regroup")
    out = tmp_path / "five"
    assert regroup.main(["--data-root", str(camvid), "--out", str(out), "--size", "24x16", "--train-images", "2"]) == 0
    assert len(list((out / "train" / "labels").iterdir())) == 2 and len(list((out / "val" / "images").iterdir())) == 2
    raw = cv2.imread(str(camvid / "valannot" / "val_000.png"), cv2.IMREAD_UNCHANGED)
    new = cv2.imread(str(out / "val" / "labels" / "val_000.png"), cv2.IMREAD_UNCHANGED)
    assert new.shape == (16, 24)
    small = cv2.resize(raw, (24, 16), interpolation=cv2.INTER_NEAREST)
    expect = {CAMVID.class_names.index(o): FIVE.index(n) for n, olds in FIVE_MAP.items() for o in olds}
    assert all(new[p] == expect.get(int(small[p]), 255) for p in np.ndindex(new.shape))
    assert yaml.safe_load((out / "class_map.yaml").read_text()) == FIVE_MAP
    assert regroup.main(["--data-root", str(camvid), "--out", str(out)]) == 2  # never into a folder with data
    assert "not empty" in capsys.readouterr().err

    merged = _script("merged_score")
    weights = tiny_checkpoint("eacnet_dab")
    assert merged.main(["--weights", str(weights), "--data-root", str(out), "--class-map",
                        str(out / "class_map.yaml")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 2 and list(result["per_class"]) == list(FIVE) and 0 <= result["miou"] <= 1
