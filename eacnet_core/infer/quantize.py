"""int8 models for CPUs: static QDQ quantisation with onnxruntime, built once and cached.

Why: on a 2-4 core robot CPU the fp32 forward pass is near the silicon's float rate
(docs/RESULTS.md); integer arithmetic (VNNI) is not. Accuracy is the risk, so:

* weights per output channel (int8), activations per tensor (uint8), QDQ format, ranges
  calibrated on real camera frames (CamVid training images, never val or test);
* the attention's softmax and its matrix products, and the final bilinear upsample, stay
  in float (``FLOAT_OPS``): tiny in cost, and where a coarse step would hurt most;
* the artefact's metadata records what it was built from (weights digest, calibration set
  and method, onnxruntime version, builder version) and its cache key is derived from those
  same fields, so changed weights or another onnxruntime build a new one, and a cached file
  whose metadata does not match (stale, truncated, edited) is rebuilt with a warning,
  never trusted.

One artefact serves every input size: the graph is exported with dynamic height and width
(what ``OrtSessions`` runs) and activation scales do not depend on the frame size.

OpenVINO has its own int8 (``openvino_int8_model``): NNCF's post-training quantisation of the
same fp32 graph read by OpenVINO, calibrated on the same frames and cached the same way (an
OpenVINO IR with the metadata in its rt_info). OpenVINO does not run onnxruntime's QDQ graph
(it crashed on it), so each engine quantises with its own pipeline.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from eacnet_core.data.transforms import normalize_bgr
from eacnet_core.outputs import write_bytes

log = logging.getLogger(__name__)

#: Bump when the recipe below changes: every cached artefact is then rebuilt.
BUILDER_VERSION = 1
#: Op types kept in float (see the module docstring).
FLOAT_OPS = ("Softmax", "MatMul", "Resize")
METADATA_KEY = "eacnet_int8"
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


@dataclass(frozen=True)
class CalibrationSpec:
    """Which frames calibrate the activation ranges, and how."""

    data_root: str  # a CamVid folder (its train split) or a folder of images
    frames: int = 32  # spread evenly over the sorted training images
    height: int = 360  # the frames are resized to this network size (CamVid native)
    width: int = 480
    method: str = "minmax"

    def __post_init__(self):
        if self.method not in CALIBRATION_METHODS:
            raise ValueError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, got {self.method!r}")
        if self.frames < 1 or self.height < 8 or self.width < 8:
            raise ValueError(f"calibration needs >= 1 frame of >= 8x8 pixels, got {self.frames} of "
                             f"{self.width}x{self.height}")


def default_calibration_root() -> str:
    """The CamVid that ``roots.find_camvid`` finds, when it holds the train split; else ''.
    Where int8 calibrates, and precision auto checks reduced precisions, without frames given."""
    from eacnet_core.data.roots import find_camvid

    root = find_camvid()
    return str(root) if root is not None and (root / "train").is_dir() else ""


def calibration_images(root: str | os.PathLike, count: int) -> list[Path]:
    """``count`` training images spread evenly over ``root``: CamVid's ``train/`` when it
    exists (never val or test: those judge the result), else the folder's own images."""
    root = Path(root)
    folder = root / "train" if (root / "train").is_dir() else root
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
    if not images:
        raise FileNotFoundError(f"no calibration images in {folder} (expected CamVid's train/ or a folder of "
                                "PNG/JPEG frames)")
    step = max(1, len(images) // count)
    return images[::step][:count]


def calibration_batches(spec: CalibrationSpec, mean: Sequence[float], std: Sequence[float]) -> Iterator[np.ndarray]:
    """(1, 3, h, w) float32 batches, normalised exactly as ``Segmenter.preprocess`` does."""
    for path in calibration_images(spec.data_root, spec.frames):
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"{path}: cannot read calibration image")
        if bgr.shape[:2] != (spec.height, spec.width):
            bgr = cv2.resize(bgr, (spec.width, spec.height), interpolation=cv2.INTER_LINEAR)
        yield normalize_bgr(bgr, mean, std)[None]


def describe_calibration(spec: CalibrationSpec) -> dict:
    """What the artefact records about its calibration: the spec and a digest of the frames' names."""
    names = [p.name for p in calibration_images(spec.data_root, spec.frames)]
    return {"frames": len(names), "size": f"{spec.width}x{spec.height}", "method": spec.method,
            "source": Path(spec.data_root).name, "images_sha256": _digest("\n".join(names).encode())}


def artefact_fields(weights_digest: str, calibration: dict, reduce_range: bool) -> dict:
    """Everything an artefact depends on; its cache key is a digest of exactly this."""
    import onnxruntime

    return {"builder": BUILDER_VERSION, "weights_sha256": weights_digest, "calibration": calibration,
            "onnxruntime": onnxruntime.__version__, "reduce_range": reduce_range, "float_ops": list(FLOAT_OPS),
            "format": "QDQ, weights int8 per channel, activations uint8 per tensor"}


def cache_key(fields: dict) -> str:
    return _digest(json.dumps(fields, sort_keys=True).encode())[:16]


def cpu_has_vnni() -> bool:
    """x86 VNNI (AVX512-VNNI or AVX-VNNI): int8 dot products without the overflow that makes
    onnxruntime advise ``reduce_range`` (7-bit weights) on older CPUs."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def quantize_graph(fp32_graph: bytes, batches: Iterator[np.ndarray], method: str, reduce_range: bool,
                   metadata: dict) -> bytes:
    """Static QDQ quantisation of an fp32 ONNX graph (bytes in, bytes out)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._batches = iter(batches)

        def get_next(self):
            batch = next(self._batches, None)
            return None if batch is None else {"image": batch}

    model = onnx.load_from_string(fp32_graph)
    keep_float = [n.name for n in model.graph.node if n.op_type in FLOAT_OPS]
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    with tempfile.TemporaryDirectory(prefix="eacnet-int8-") as folder, _quiet_root_logger():
        source, target = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        source.write_bytes(fp32_graph)
        quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=keep_float, calibrate_method=methods[method],
                        extra_options={"CalibTensorRangeSymmetric": False})
        quantized = onnx.load(str(target))
    onnx.helper.set_model_props(quantized, {METADATA_KEY: json.dumps(metadata, sort_keys=True)})
    return quantized.SerializeToString()


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization logs advice on the root logger ("consider pre-processing",
    per-channel axis notes for BatchNorm weights it then quantises per tensor): at WARNING
    level they read as faults to a robot's operator. Keep them at DEBUG on our logger."""
    root = logging.getLogger()

    class Demote(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            log.debug("onnxruntime.quantization: %s", record.getMessage())
            return False

    demote = Demote()
    root.addFilter(demote)
    try:
        yield
    finally:
        root.removeFilter(demote)


def read_metadata(graph: bytes) -> Optional[dict]:
    """The eacnet metadata of an int8 artefact; None when absent or unreadable."""
    import onnx

    try:
        model = onnx.load_from_string(graph)
        props = {p.key: p.value for p in model.metadata_props}
        return json.loads(props[METADATA_KEY])
    except Exception:  # a truncated or foreign file: protobuf's DecodeError, KeyError, JSON errors
        return None


class Int8Cache:
    """int8 artefacts on disk, keyed by ``cache_key(artefact_fields(...))``.

    ``folder`` is beside the fp32 source when that is writable, else the user cache
    (``$XDG_CACHE_HOME/eacnet/int8``): installed packages are often read-only."""

    def __init__(self, folder: Path):
        self.folder = folder

    @classmethod
    def beside(cls, weights: Optional[Path]) -> Int8Cache:
        """Beside the user's own writable checkpoint; the user cache for weights without a
        file, read-only ones and the package's own (an install or source tree is no cache)."""
        if weights is not None and os.access(weights.parent, os.W_OK) and not _package_owned(weights):
            return cls(weights.parent / "int8-cache")
        return cls(user_cache_dir() / "int8")

    def path(self, model_name: str, fields: dict) -> Path:
        return self.folder / f"{model_name}-{cache_key(fields)}.int8.onnx"

    def load(self, model_name: str, fields: dict) -> Optional[bytes]:
        """The cached artefact if present and its metadata matches ``fields``; else None
        (a mismatching or unreadable file is reported and will be replaced)."""
        path = self.path(model_name, fields)
        if not path.is_file():
            return None
        graph = path.read_bytes()
        if read_metadata(graph) != fields:
            log.warning("int8: %s does not match what it should have been built from (stale, truncated or "
                        "edited): rebuilding it", path)
            return None
        return graph

    def load_any_calibration(self, model_name: str, fields: dict) -> Optional[tuple[Path, bytes]]:
        """The newest valid artefact for ``fields`` whatever its calibration: where no
        calibration frames are at hand (a robot without the dataset) one built earlier still
        serves, as long as the weights, onnxruntime and the recipe are the same."""
        wanted = {k: v for k, v in fields.items() if k != "calibration"}
        candidates = sorted(self.folder.glob(f"{model_name}-*.int8.onnx"), key=lambda p: p.stat().st_mtime,
                            reverse=True) if self.folder.is_dir() else []
        for path in candidates:
            graph = path.read_bytes()
            meta = read_metadata(graph)
            if meta is not None and {k: v for k, v in meta.items() if k != "calibration"} == wanted:
                return path, graph
        return None

    def openvino_candidates(self, model_name: str) -> list[Path]:
        """Cached OpenVINO int8 IRs of ``model_name``, newest first."""
        if not self.folder.is_dir():
            return []
        return sorted(self.folder.glob(f"{model_name}-*.int8.xml"), key=lambda p: p.stat().st_mtime, reverse=True)

    def store(self, model_name: str, fields: dict, graph: bytes) -> Path:
        """Atomically (outputs.write_bytes): concurrent builders or a crash never leave half a file."""
        path = self.path(model_name, fields)
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_bytes(path, graph)


def int8_graph(model_name: str, fp32_graph: bytes, weights: Optional[Path], weights_digest: str,
               spec: Optional[CalibrationSpec], mean: Sequence[float], std: Sequence[float],
               cache: Optional[Int8Cache] = None) -> bytes:
    """The int8 graph for these weights: from the cache when it matches, else built (with a
    log line saying so and how long it took) and cached."""
    cache = cache or Int8Cache.beside(weights)
    if spec is None:
        found = cache.load_any_calibration(model_name, artefact_fields(weights_digest, {}, not cpu_has_vnni()))
        if found is not None:
            log.info("int8: no calibration frames given; using %s (calibrated on %s)", found[0],
                     read_metadata(found[1])["calibration"])
            return found[1]
        raise ValueError(f"precision int8 needs calibration frames to build {model_name}'s int8 model: pass "
                         "calibration data (a CamVid folder or a folder of camera frames; EACNET_DATA is used "
                         "when set)")
    fields = artefact_fields(weights_digest, describe_calibration(spec), reduce_range=not cpu_has_vnni())
    cached = cache.load(model_name, fields)
    if cached is not None:
        log.info("int8: using %s", cache.path(model_name, fields))
        return cached
    log.info("int8: building %s's int8 model (%d calibration frames at %dx%d, %s) ...", model_name, spec.frames,
             spec.width, spec.height, spec.method)
    started = time.perf_counter()
    graph = quantize_graph(fp32_graph, calibration_batches(spec, mean, std), spec.method, fields["reduce_range"],
                           fields)
    path = cache.store(model_name, fields, graph)
    log.info("int8: built in %.1f s -> %s", time.perf_counter() - started, path)
    return graph


def openvino_fields(weights_digest: str, calibration: dict) -> dict:
    """What an OpenVINO int8 artefact depends on (its cache key is a digest of this)."""
    import nncf
    import openvino

    return {"builder": BUILDER_VERSION, "weights_sha256": weights_digest, "calibration": calibration,
            "openvino": openvino.__version__, "nncf": nncf.__version__, "format": "OpenVINO IR, NNCF post-training"}


def openvino_int8_model(model_name: str, fp32_graph: bytes, weights: Optional[Path], weights_digest: str,
                        spec: Optional[CalibrationSpec], mean: Sequence[float], std: Sequence[float],
                        cache: Optional[Int8Cache] = None):
    """OpenVINO's int8 model (an ``openvino.Model`` with dynamic height and width) for these
    weights: from the cache when its metadata matches, else quantised by NNCF on the
    calibration frames and cached. Without calibration frames only a cached one serves."""
    import openvino as ov

    cache = cache or Int8Cache.beside(weights)
    core = ov.Core()
    if spec is None:
        wanted = {k: v for k, v in openvino_fields(weights_digest, {}).items() if k != "calibration"}
        for path in cache.openvino_candidates(model_name):
            model, meta = _read_openvino(core, path)
            if meta is not None and {k: v for k, v in meta.items() if k != "calibration"} == wanted:
                log.info("int8 (OpenVINO): no calibration frames given; using %s", path)
                return model
        raise ValueError(f"OpenVINO int8 needs calibration frames to build {model_name}'s int8 model")
    fields = openvino_fields(weights_digest, describe_calibration(spec))
    path = cache.folder / f"{model_name}-{cache_key(fields)}.int8.xml"
    if path.is_file():
        model, meta = _read_openvino(core, path)
        if meta == fields:
            log.info("int8 (OpenVINO): using %s", path)
            return model
        log.warning("int8 (OpenVINO): %s does not match what it should have been built from: rebuilding it", path)
    log.info("int8 (OpenVINO): quantising %s with NNCF (%d calibration frames at %dx%d) ...", model_name,
             spec.frames, spec.width, spec.height)
    started = time.perf_counter()
    model = _nncf_quantize(core, fp32_graph, list(calibration_batches(spec, mean, std)))
    model.set_rt_info(json.dumps(fields, sort_keys=True), METADATA_KEY)
    _save_openvino(model, path)
    log.info("int8 (OpenVINO): built in %.1f s -> %s", time.perf_counter() - started, path)
    return core.read_model(str(path))


def _nncf_quantize(core, fp32_graph: bytes, batches: list[np.ndarray]):
    """NNCF post-training quantisation (mixed preset: asymmetric activations, as the QDQ
    recipe's uint8 ones) of the fp32 ONNX graph, as OpenVINO reads it."""
    import nncf

    with tempfile.TemporaryDirectory(prefix="eacnet-ov-int8-") as folder:
        source = Path(folder) / "fp32.onnx"
        source.write_bytes(fp32_graph)
        model = core.read_model(str(source))
    with _quiet_root_logger():
        return nncf.quantize(model, nncf.Dataset(batches), preset=nncf.QuantizationPreset.MIXED,
                             subset_size=len(batches), fast_bias_correction=True)


def _read_openvino(core, path: Path):
    """(model, its eacnet metadata or None) of a cached IR; (None, None) when unreadable."""
    try:
        model = core.read_model(str(path))
        if not model.has_rt_info(METADATA_KEY):
            return model, None
        return model, json.loads(model.get_rt_info(METADATA_KEY).astype(str))
    except Exception as exc:  # a truncated IR: OpenVINO raises RuntimeError, JSON ValueError
        log.debug("int8 (OpenVINO): cannot read %s: %s", path, exc)
        return None, None


def _save_openvino(model, path: Path) -> None:
    """Write the IR so that a reader never sees half of it: both files are written under a
    temporary folder, then moved in, the weights before the graph that names them."""
    import openvino as ov

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".eacnet-ov-", dir=path.parent) as folder:
        staged = Path(folder) / path.name
        ov.save_model(model, str(staged), compress_to_fp16=False)
        os.replace(staged.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(staged, path)


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/eacnet``, else ``~/.cache/eacnet``: where built artefacts go."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "eacnet"


def _package_owned(path: Path) -> bool:
    """Weights shipped with the package (its own folder, or any installed package)."""
    resolved = path.resolve()
    package = Path(__file__).resolve().parents[1]
    return package in resolved.parents or any(p in ("site-packages", "dist-packages") for p in resolved.parts)


def file_digest(path: Path) -> str:
    return _digest(path.read_bytes())


def state_digest(state: dict) -> str:
    """Digest of a model's weights (for untrained or in-memory models without a file)."""
    h = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


__all__ = ["CalibrationSpec", "Int8Cache", "int8_graph", "openvino_int8_model", "user_cache_dir",
           "quantize_graph", "read_metadata", "cache_key",
           "artefact_fields", "calibration_images", "cpu_has_vnni", "file_digest", "state_digest"]
