"""What ``precision``/``backend`` auto chose, remembered per machine and situation.

Timing every candidate at a new size costs seconds (each engine compiled and run a few
times; about 10 s at 1280x720 on a loaded 2-core CPU), and the answer only changes when
something it depends on changes. So the choice is kept in the user cache
(``$XDG_CACHE_HOME/eacnet/choices``), keyed by exactly those things: the CPU (model name and
instruction-set flags), the thread count, the network size, the model and a digest of its
weights, the candidates offered and the versions of the libraries that run them. A later
start on the same machine then builds only the chosen engine.

A record holds the choice, every candidate's timing (and which were dropped after their first
run) and each reduced precision's mask agreement with fp32, so the log of a cached start says
what the measured one said.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import logging
import platform
from pathlib import Path
from typing import Optional

from eacnet_core.outputs import write_bytes

log = logging.getLogger(__name__)

#: Bump when the way candidates are timed or checked changes: old records are then ignored.
RECORD_VERSION = 1
#: Libraries whose versions change what the engines compute or how fast.
LIBRARIES = ("torch", "onnxruntime", "openvino", "nncf", "onnx")


@functools.cache
def cpu_identity() -> dict:
    """The CPU's model name and a digest of its instruction-set flags (Linux /proc/cpuinfo;
    elsewhere what ``platform`` knows)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    flags = " ".join(sorted((fields.get("flags") or fields.get("Features") or "").split()))
    return {"cpu": name, "flags_sha256": hashlib.sha256(flags.encode()).hexdigest()[:16]}


@functools.cache
def library_versions() -> dict:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def choice_fields(model: str, weights_digest: str, size_hw: tuple[int, int], threads: int,
                  candidates: list[str], checked: bool) -> dict:
    """Everything a choice depends on; ``checked``: reduced precisions were compared with fp32."""
    return {"version": RECORD_VERSION, **cpu_identity(), "threads": threads, "size": list(size_hw),
            "model": model, "weights_sha256": weights_digest, "candidates": candidates, "checked": checked,
            "libraries": library_versions()}


class ChoiceCache:
    """Choice records on disk, one JSON file per key; unreadable or mismatching files are
    ignored (and replaced by the next measurement), never trusted."""

    def __init__(self, folder: Path):
        self.folder = folder

    @classmethod
    def default(cls) -> ChoiceCache:
        from eacnet_core.infer.quantize import user_cache_dir

        return cls(user_cache_dir() / "choices")

    def path(self, fields: dict) -> Path:
        key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
        return self.folder / f"{fields['model']}-{key}.json"

    def load(self, fields: dict) -> Optional[dict]:
        path = self.path(fields)
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        shape = {"ms": dict, "agreement": dict, "dropped": list}
        if not isinstance(record, dict) or record.get("fields") != fields \
                or record.get("choice") not in fields["candidates"] \
                or not all(isinstance(record.get(k), kind) for k, kind in shape.items()):
            log.debug("choice cache: ignoring %s (it does not match)", path)
            return None
        return record

    def store(self, fields: dict, choice: str, ms: dict, agreement: dict, dropped: list) -> Optional[Path]:
        """Atomically; a read-only cache folder only costs the next start its timing."""
        record = {"fields": fields, "choice": choice, "ms": ms, "agreement": agreement, "dropped": dropped}
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            return write_bytes(self.path(fields), json.dumps(record, indent=1, sort_keys=True).encode())
        except OSError as exc:
            log.warning("choice cache: cannot write in %s (%s): the next start times again", self.folder, exc)
            return None
