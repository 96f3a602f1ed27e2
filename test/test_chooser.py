"""The Chooser as a unit: backend/precision auto's choices, timed by an injected clock on a
fake Segmenter, remembered unless the machine was busy (an injected load reader), and the
choice cache's handling of old, broken and busy records."""

from __future__ import annotations

import gc
import json
import logging
import weakref

import numpy as np
import pytest
import torch

from eacnet_core.infer import chooser, quantize
from eacnet_core.infer.choice import RECORD_VERSION, ChoiceCache, choice_fields
from eacnet_core.infer.chooser import Candidate, Chooser
from eacnet_core.infer.segmenter import Segmenter, SegmenterOptions

#: What the fake paths take per run, ms; the differences are far beyond any noise (no clock is read).
MS = {"onnxruntime:fp32": 10.0, "torch:fp32:nhwc": 12.0, "torch:fp32:nchw": 14.0, "openvino:fp32": 8.0,
      "openvino:bf16": 3.0}
SIZE = (8, 6)  # (height, width) of the network input


class FakeSegmenter:
    """What a Chooser drives (``chooser.Driven``), without a network: fp32's class ids are all
    0; a reduced precision gets class 1 on the first ``wrong[precision]`` pixels."""

    def __init__(self, precision: str = "auto", backend: str = "auto"):
        self.options = SegmenterOptions(device="cpu", precision=precision, backend=backend, threads=1)
        self.device = torch.device("cpu")
        self.backend, self.precision, self.channels_last = "torch", "fp32", True
        self.model_name, self.weights, self.weights_digest = "fake", None, "0" * 64
        self.wrong = {"bf16": 0}
        self.used: list[str] = []
        self.released: list[str] = []
        self.compiled_dropped = 0

    @property
    def label(self) -> str:
        return Candidate(self.backend, self.precision, self.channels_last).label

    def use(self, candidate: Candidate) -> None:
        self.backend, self.precision = candidate.backend, candidate.precision
        self.channels_last = candidate.channels_last and candidate.backend == "torch"
        self.used.append(candidate.label)

    def engine(self, backend: str, precision: str):
        fake = self

        class Engine:
            def runner(self, height, width):
                return fake.logits

        return Engine()

    def release_engines(self, chosen: Candidate) -> None:
        self.released.append(chosen.label)

    def drop_compiled(self) -> None:
        self.compiled_dropped += 1

    def logits(self, batch: np.ndarray) -> np.ndarray:
        logits = np.zeros((1, 2, batch.shape[2], batch.shape[3]), np.float32)
        logits[:, 0] = 1.0
        logits[0, 1].reshape(-1)[:self.wrong.get(self.precision, 0)] = 2.0
        return logits

    def device_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend == "torch_compiled" and getattr(self, "compiler_fails", False):
            raise RuntimeError("no compiler here")
        return x

    def preprocess(self, bgr: np.ndarray) -> np.ndarray:
        return np.zeros((1, 3, *bgr.shape[:2]), np.float32)

    def network_size(self, height: int, width: int) -> tuple[int, int]:
        return height, width

    def mask_from_logits(self, logits: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
        return logits[0].argmax(0).astype(np.uint8)


@pytest.fixture(autouse=True)
def _every_candidate_here(monkeypatch, tmp_path):
    """The same candidates on any machine (onnxruntime, OpenVINO and native bf16 "installed"),
    no calibration frames found, and a user cache of the test's own (no int8 model in it)."""
    monkeypatch.setattr(chooser, "_ort_available", lambda: True)
    monkeypatch.setattr(chooser, "_ov_available", lambda: True)
    monkeypatch.setattr(chooser, "_nncf_available", lambda: True)
    monkeypatch.setattr(chooser, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(quantize, "default_calibration_root", lambda: "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))


def clock(fake: FakeSegmenter, ms: dict[str, float] = MS):
    """An ``elapsed`` that runs each run and reports the fixed time of the path running it."""
    fake.timed = []

    def elapsed(run, *args):
        run(*args)
        fake.timed.append(fake.label)
        return ms[fake.label]

    return elapsed


def never(run, *args):
    raise AssertionError("timed, though the choice was remembered")


def choose(fake: FakeSegmenter, cache: ChoiceCache, load, elapsed=None) -> Chooser:
    """A precision auto choice at SIZE, with one probe frame to check bf16 on."""
    made = Chooser(fake, cache=cache, elapsed=elapsed or clock(fake), load=load)
    batch = np.zeros((1, 3, *SIZE), np.float32)
    made.choose_cpu(batch, probes=[batch])
    return made


def choice_line(caplog) -> str:
    (line,) = [m for m in caplog.messages if m.startswith("auto at ")]
    caplog.clear()
    return line


def test_the_fastest_path_that_agrees_with_fp32_is_kept_and_remembered_with_its_load(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="eacnet_core")
    cache = ChoiceCache(tmp_path / "choices")
    fake = FakeSegmenter()
    fake.wrong = {"bf16": 1}  # 1 of 48 pixels: 97.9% agreement, under AGREEMENT_MIN
    made = choose(fake, cache, load=lambda: 0.25)
    assert made.ms == MS and made.agreement == {"openvino:bf16": 47 / 48} and made.dropped == []
    assert made.chosen.label == "openvino:fp32" == fake.label  # bf16 was faster but disagrees
    assert fake.released == ["openvino:fp32"] and made.size == SIZE and made.complete
    assert fake.timed.count("onnxruntime:fp32") == 4  # the untimed first run, then the least of 3
    assert choice_line(caplog) == ("auto at 6x8 (measured): onnxruntime:fp32 10 ms, torch:fp32:nhwc 12 ms, "
                                   "torch:fp32:nchw 14 ms, openvino:fp32 8 ms, openvino:bf16 3 ms agrees "
                                   "97.92% -> openvino:fp32")
    (path,) = cache.folder.iterdir()
    record = json.loads(path.read_text())
    assert record["choice"] == "openvino:fp32" and record["ms"] == MS and record["load_per_core"] == 0.25
    assert record["measured_at"].endswith("+00:00")

    again = FakeSegmenter()
    remembered = choose(again, cache, load=lambda: 5.0, elapsed=never)  # a busy machine reads the record
    assert remembered.chosen.label == "openvino:fp32" == again.label and remembered.ms == MS
    assert remembered.load_seen == 0.25
    assert choice_line(caplog).startswith("auto at 6x8 (remembered): onnxruntime:fp32 10 ms")


def test_a_choice_measured_on_a_busy_machine_serves_but_is_not_remembered(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="eacnet_core")
    cache = ChoiceCache(tmp_path / "choices")
    fake = FakeSegmenter()
    made = choose(fake, cache, load=lambda: 1.6)
    assert made.chosen.label == "openvino:bf16" == fake.label  # it runs all the same
    assert not cache.folder.exists()
    line = choice_line(caplog)
    assert line.endswith("openvino:bf16 3 ms agrees 100.00%; not remembered: the machine was busy "
                         "(load 1.60 per core, over 1.00) -> openvino:bf16")
    from eacnet_ros.bench.dds import CHOICE_PATTERN  # bench-dds reads the node's choice from this line

    assert CHOICE_PATTERN.search(line).group("backend", "precision") == ("openvino", "bf16")
    loads = iter([0.2, 1.2])  # idle when it began, busy by the end: the higher reading counts
    choose(FakeSegmenter(), cache, load=lambda: next(loads))
    assert not cache.folder.exists() and "busy (load 1.20 per core" in choice_line(caplog)

    measured = FakeSegmenter()
    choose(measured, cache, load=lambda: 0.9)  # under the threshold: measured again, and remembered
    assert measured.timed and len(list(cache.folder.iterdir())) == 1
    assert "not remembered" not in choice_line(caplog)


def test_an_unknown_load_does_not_stop_remembering(tmp_path):
    cache = ChoiceCache(tmp_path / "choices")
    choose(FakeSegmenter(), cache, load=lambda: None)  # a system without a load average
    (path,) = cache.folder.iterdir()
    assert json.loads(path.read_text())["load_per_core"] is None
    assert choose(FakeSegmenter(), cache, load=lambda: None, elapsed=never).chosen.label == "openvino:bf16"


def test_the_threshold_is_the_choosers_and_nothing_is_remembered_with_the_cache_off(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="eacnet_core")
    cache = ChoiceCache(tmp_path / "choices")
    fake = FakeSegmenter()
    strict = Chooser(fake, cache=cache, elapsed=clock(fake), load=lambda: 0.5, busy_load=0.4)
    strict.choose_cpu(np.zeros((1, 3, *SIZE), np.float32))
    assert not cache.folder.exists() and "over 0.40" in choice_line(caplog)
    off = FakeSegmenter(precision="fp32")
    off.options = SegmenterOptions(device="cpu", precision="fp32", threads=1, choice_cache=False)
    Chooser(off, cache=cache, elapsed=clock(off), load=lambda: 9.0).tune(SIZE)
    assert not cache.folder.exists() and "not remembered" not in choice_line(caplog)  # nothing to say


def test_old_broken_and_busy_records_are_ignored_and_named(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="eacnet_core")
    cache = ChoiceCache(tmp_path / "choices")
    fake = FakeSegmenter()
    first = choose(fake, cache, load=lambda: 0.1)
    (path,) = cache.folder.iterdir()
    fields = json.loads(path.read_text())["fields"]
    path.unlink()
    # what the previous version wrote for this situation: another key, no load, a slow choice
    old_fields = {**fields, "version": 1}
    old = cache.path(old_fields)
    old.write_text(json.dumps({"fields": old_fields, "choice": "onnxruntime:fp32", "ms": MS, "agreement": {},
                               "dropped": []}))
    (cache.folder / "fake-0000000000000000.json").write_text("{not json")  # another situation's, broken
    caplog.clear()
    again = choose(FakeSegmenter(), cache, load=lambda: 0.1)
    assert again.chosen == first.chosen  # measured, not the old record's onnxruntime
    ignored = [m for m in caplog.messages if m.startswith("choice cache: ignoring")]
    assert ignored == [f"choice cache: ignoring {old} (a version 1 record, which may have been measured on a "
                       "busy machine); measuring again"]
    assert old.is_file() and cache.path(fields).is_file()
    caplog.clear()
    choose(FakeSegmenter(), cache, load=lambda: 0.1, elapsed=never)  # the new record serves; nothing ignored
    assert not any(m.startswith("choice cache: ignoring") for m in caplog.messages)

    record = json.loads(cache.path(fields).read_text())
    for broken, why in [("{", "unreadable"), (json.dumps({**record, "fields": old_fields}), "fields do not match"),
                        (json.dumps({**record, "choice": "torch:int4"}), "is not a candidate"),
                        (json.dumps({k: v for k, v in record.items() if k != "load_per_core"}),
                         "missing or malformed: load_per_core"),
                        (json.dumps({**record, "ms": [1]}), "missing or malformed: ms"),
                        (json.dumps({**record, "load_per_core": 2.5}), "busy machine, load 2.50 per core")]:
        cache.path(fields).write_text(broken)
        caplog.clear()
        assert cache.load(fields, busy_load=1.0) is None
        assert [m for m in caplog.messages if why in m and str(cache.path(fields)) in m], (why, caplog.messages)


def test_a_previous_version_record_never_shares_a_file_with_this_one(tmp_path):
    fields = choice_fields("fake", "0" * 64, SIZE, 1, ["torch:fp32:nchw"], False)
    assert fields["version"] == RECORD_VERSION >= 2
    assert ChoiceCache(tmp_path).path(fields) != ChoiceCache(tmp_path).path({**fields, "version": 1})


def test_the_choice_waits_for_the_first_frame_when_the_size_is_unknown(tmp_path):
    fake = FakeSegmenter(precision="fp32")
    made = Chooser(fake, cache=ChoiceCache(tmp_path / "choices"), elapsed=clock(fake), load=lambda: 0.0)
    assert made.on_cpu and not made.on_cuda and not made.auto_precision
    assert made.described() == ("fp32", "auto (not chosen yet)")
    made.at_warmup(None)
    assert made.pending and fake.timed == []
    assert made.described() == ("fp32", "auto (chosen on the first frame)")
    made.first_frame(np.zeros((*SIZE, 3), np.uint8))
    assert not made.pending and made.size == SIZE and made.chosen.label == "openvino:fp32"
    assert made.described() == ("fp32", "openvino (chosen by auto)")
    fake.timed.clear()
    made.first_frame(np.zeros((16, 12, 3), np.uint8))
    made.at_warmup((16, 12))
    made.settle(np.zeros((1, 3, 16, 12), np.float32))
    assert fake.timed == [] and made.size == SIZE  # chosen once; tune() alone measures again
    made.tune((16, 12))
    assert made.size == (16, 12) and fake.timed


def test_a_known_size_is_chosen_at_warmup_and_a_copy_adopts_its_choice(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="eacnet_core")
    serving, twin = FakeSegmenter(precision="fp32"), FakeSegmenter(precision="fp32")
    made = Chooser(serving, cache=ChoiceCache(tmp_path / "choices"), elapsed=clock(serving), load=lambda: 0.0)
    made.at_warmup(SIZE)
    assert not made.pending and made.size == SIZE and serving.label == "openvino:fp32"
    caplog.clear()
    other = made.beside(twin)
    assert (other.cache, other.elapsed, other.load) == (made.cache, made.elapsed, made.load)
    slower = dict(MS, **{"openvino:fp32": 30.0})
    other.elapsed = clock(twin, slower)
    other.choose_cpu(np.zeros((1, 3, 16, 12), np.float32))
    made.adopt(other)
    assert made.size == (16, 12) and made.chosen.label == "onnxruntime:fp32" == serving.label
    assert made.ms == other.ms and made.ms is not other.ms
    assert serving.released[-1] == "onnxruntime:fp32"
    assert caplog.messages[-1].startswith("auto at 12x16 (adopted): onnxruntime:fp32 10 ms")


def test_cuda_keeps_the_faster_of_eager_and_compiled_and_survives_a_failing_compiler(caplog):
    caplog.set_level(logging.INFO, logger="eacnet_core")
    fake = FakeSegmenter(precision="fp32")
    made = Chooser(fake, elapsed=clock(fake, {"torch:fp32:nhwc": 5.0, "torch_compiled:fp32": 2.0}))
    made.choose_cuda(SIZE, runs=3)  # on CPU tensors: the timing does not care where they are
    assert made.ms == {"torch": 5.0, "torch_compiled": 2.0} and made.chosen.label == "torch_compiled:fp32"
    assert fake.compiled_dropped == 0 and made.size == SIZE
    assert caplog.messages[-1] == "backend auto at 6x8 on cpu: torch 5.00 ms, torch_compiled 2.00 ms -> torch_compiled"
    fake.compiler_fails = True
    made.choose_cuda(SIZE, runs=3)
    assert made.ms == {"torch": 5.0} and fake.label == "torch:fp32:nhwc" and fake.compiled_dropped == 2
    assert any("torch_compiled failed at 6x8 (RuntimeError: no compiler here)" in m for m in caplog.messages)


def test_machine_load_is_the_load_average_per_core(monkeypatch):
    monkeypatch.setattr(chooser.os, "getloadavg", lambda: (3.0, 1.0, 0.5))
    monkeypatch.setattr(chooser.os, "cpu_count", lambda: 2)
    assert chooser.machine_load() == 1.5

    def none():
        raise OSError("no load average here")

    monkeypatch.setattr(chooser.os, "getloadavg", none)
    assert chooser.machine_load() is None


def test_a_dropped_segmenter_is_freed_at_once_its_chooser_holds_it_weakly():
    """No reference cycle through the Chooser: a node that froze its long-lived objects
    (gc.freeze) would otherwise never free a Segmenter it dropped."""
    seg = Segmenter.from_name("dabnet", options=SegmenterOptions(device="cpu", backend="torch", threads=1),
                              allow_untrained=True)
    assert seg.chooser.segmenter.model_name == "dabnet"
    alive = weakref.ref(seg)
    gc.disable()
    try:
        del seg
        assert alive() is None
    finally:
        gc.enable()
