"""precision int8: static QDQ quantisation close to fp32, its cache key, and stale or broken
cached artefacts rebuilt with a warning, never trusted."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from conftest import save_tiny_checkpoint

from eacnet_core.data.classes import generic
from eacnet_core.infer import quantize
from eacnet_core.infer.segmenter import Segmenter, SegmenterOptions
from eacnet_core.models import build_model
from eacnet_core.runtime import resolve_precision

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

SIZE = (32, 48)


@pytest.fixture
def frames(tmp_path, synthetic):
    """A folder of camera frames (what a robot would calibrate on)."""
    rng = np.random.default_rng(0)
    for i in range(4):
        image, _ = synthetic.pair(rng, *SIZE)
        synthetic.write_png(tmp_path / "frames" / f"frame_{i}.png", image)
    return tmp_path / "frames"


def _weights(tmp_path, seed: int, name: str = "w.pt"):
    return save_tiny_checkpoint(tmp_path / name, "erfnet_enc", generic(3), seed=seed)


def _segmenter(weights, frames, precision="int8", **kw) -> Segmenter:
    options = SegmenterOptions(device="cpu", precision=precision, backend="onnxruntime", inference_height=SIZE[0],
                               inference_width=SIZE[1], calibration_data=str(frames), **kw)
    seg = Segmenter.from_checkpoint(weights, options)
    seg.warmup()
    return seg


def test_int8_logits_stay_close_to_fp32(tmp_path, frames, synthetic):
    weights = _weights(tmp_path, 0)
    int8, fp32 = _segmenter(weights, frames), _segmenter(weights, frames, precision="fp32")
    image, _ = synthetic.pair(np.random.default_rng(7), *SIZE)
    batch = fp32.preprocess(image)
    a, b = np.asarray(fp32.logits(batch)), np.asarray(int8.logits(batch))
    assert a.shape == b.shape
    spread = a.max() - a.min()
    assert np.abs(a - b).mean() < 0.05 * spread, (np.abs(a - b).mean(), spread)
    assert (a.argmax(1) == b.argmax(1)).mean() > 0.8
    assert int8.backend == "onnxruntime" and "precision=int8" in int8.describe()


def test_artefact_records_what_it_was_built_from_and_is_reused(tmp_path, frames, caplog):
    weights = _weights(tmp_path, 0)
    with caplog.at_level(logging.INFO, logger="eacnet_core"):
        _segmenter(weights, frames)
    built = list((tmp_path / "int8-cache").glob("erfnet_enc-*.int8.onnx"))
    assert len(built) == 1 and any("building erfnet_enc's int8 model" in m for m in caplog.messages)
    meta = quantize.read_metadata(built[0].read_bytes())
    assert meta["weights_sha256"] == quantize.file_digest(weights)
    assert meta["calibration"]["frames"] == 4 and meta["calibration"]["method"] == "minmax"
    assert meta["calibration"]["size"] == "48x32" and meta["builder"] == quantize.BUILDER_VERSION
    import onnxruntime

    assert meta["onnxruntime"] == onnxruntime.__version__
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="eacnet_core"):
        _segmenter(weights, frames)
    assert any("int8: using" in m for m in caplog.messages)
    assert not any("building" in m for m in caplog.messages)


def test_changed_weights_or_onnxruntime_change_the_key(tmp_path, frames):
    a, b = _weights(tmp_path, 0, "a.pt"), _weights(tmp_path, 1, "b.pt")
    calib = quantize.describe_calibration(quantize.CalibrationSpec(str(frames), height=SIZE[0], width=SIZE[1]))
    fa = quantize.artefact_fields(quantize.file_digest(a), calib, reduce_range=False)
    fb = quantize.artefact_fields(quantize.file_digest(b), calib, reduce_range=False)
    assert quantize.cache_key(fa) != quantize.cache_key(fb)
    assert quantize.cache_key(fa) != quantize.cache_key(dict(fa, onnxruntime="0.0.1"))
    assert quantize.cache_key(fa) == quantize.cache_key(dict(fa))


@pytest.mark.parametrize("damage", ["truncated", "stale"])
def test_broken_or_stale_cached_artefact_is_rebuilt_with_a_warning(tmp_path, frames, caplog, damage):
    weights = _weights(tmp_path, 0)
    _segmenter(weights, frames)
    (path,) = (tmp_path / "int8-cache").glob("*.int8.onnx")
    good = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    else:  # a valid graph that claims other weights
        import json

        import onnx

        model = onnx.load_from_string(good)
        meta = json.loads({p.key: p.value for p in model.metadata_props}[quantize.METADATA_KEY])
        onnx.helper.set_model_props(model, {quantize.METADATA_KEY: json.dumps(dict(meta, weights_sha256="0" * 64))})
        path.write_bytes(model.SerializeToString())
    with caplog.at_level(logging.INFO, logger="eacnet_core"):
        _segmenter(weights, frames)
    assert any("rebuilding it" in m for m in caplog.messages)
    assert quantize.read_metadata(path.read_bytes())["weights_sha256"] == quantize.file_digest(weights)


def test_no_calibration_frames_is_a_clear_error(tmp_path):
    weights = _weights(tmp_path, 0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no calibration images in"):
        _segmenter(weights, tmp_path / "empty")


def test_a_cached_artefact_serves_where_no_calibration_frames_are(tmp_path, frames, monkeypatch, caplog):
    """A robot without the dataset: the int8 model built earlier for these weights is used."""
    weights = _weights(tmp_path, 0)
    built = _segmenter(weights, frames)
    monkeypatch.setattr(quantize, "default_calibration_root", lambda: "")
    caplog.clear()  # the build above may have been captured too
    with caplog.at_level(logging.INFO, logger="eacnet_core"):
        reused = _segmenter(weights, "")
    assert any("no calibration frames given; using" in m for m in caplog.messages)
    assert not any("building" in m for m in caplog.messages)
    batch = built.preprocess(np.zeros((*SIZE, 3), np.uint8))
    assert np.array_equal(np.asarray(built.logits(batch)), np.asarray(reused.logits(batch)))
    with pytest.raises(ValueError, match="needs calibration frames"):  # other weights: nothing to reuse
        _segmenter(_weights(tmp_path, 1, "other.pt"), "")


def test_int8_needs_onnxruntime_backend_and_the_cpu():
    with pytest.raises(ValueError, match="int8 runs on onnxruntime"):
        Segmenter(build_model("erfnet_enc", 3), "erfnet_enc", generic(3),
                  SegmenterOptions(device="cpu", precision="int8", backend="torch"))
    with pytest.raises(ValueError, match="int8 runs on the CPU"):
        resolve_precision("int8", torch.device("cuda"))
    assert resolve_precision("int8", torch.device("cpu")) == "int8"


def test_cache_lives_in_the_user_cache_without_a_weights_file(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert quantize.Int8Cache.beside(None).folder == tmp_path / "xdg" / "eacnet" / "int8"
    weights = _weights(tmp_path, 0)
    assert quantize.Int8Cache.beside(weights).folder == tmp_path / "int8-cache"


def test_package_owned_weights_cache_in_the_user_cache(tmp_path, monkeypatch):
    """An install or source tree is no cache, even where it is writable."""
    from eacnet_core.checkpoint import WEIGHTS_DIR

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    packaged = next(WEIGHTS_DIR.glob("*.pt"))
    assert quantize.Int8Cache.beside(packaged).folder == tmp_path / "xdg" / "eacnet" / "int8"
    installed = tmp_path / "lib" / "site-packages" / "eacnet_core" / "weights"
    installed.mkdir(parents=True)
    (installed / "w.pt").write_bytes(b"")
    assert quantize.Int8Cache.beside(installed / "w.pt").folder == tmp_path / "xdg" / "eacnet" / "int8"
