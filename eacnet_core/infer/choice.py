"""What ``precision``/``backend`` auto chose (``chooser.Chooser``), remembered per machine and
situation.

Timing every candidate at a new size costs seconds (each engine compiled and run a few
times; about 10 s at 1280x720 on a loaded 2-core CPU), and the answer only changes when
something it depends on changes. So the choice is kept in the user cache
(``$XDG_CACHE_HOME/eacnet/choices``), keyed by exactly those things: the CPU (model name and
instruction-set flags), the thread count, the network size, the model and a digest of its
weights, the candidates offered and the versions of the libraries that run them. A later
start on the same machine then builds only the chosen engine.

A record holds the choice, every candidate's timing (and which were dropped after their first
run), each reduced precision's mask agreement with fp32, and the machine's load per core
while they were timed (and when), so the log of a cached start says what the measured one
said, and a reader can see the conditions it was measured in. The Chooser stores no choice
measured on a busy machine; a record that says otherwise is not trusted.
"""

from __future__ import annotations

import datetime
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

#: Bump when the way candidates are timed, checked or kept changes: old records are then
#: ignored (the version is part of the key). 2: records hold the load they were measured at,
#: and none was measured on a busy machine (a version 1 record may have been).
RECORD_VERSION = 2
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
    """Choice records on disk, one JSON file per key (a digest of the fields). Unreadable,
    mismatching or earlier-version files are ignored, with a line saying which and why, and
    replaced by the next measurement: never trusted, never a failure."""

    #: what a record holds beside its fields and choice, and the types of each
    SHAPE = {"ms": (dict,), "agreement": (dict,), "dropped": (list,), "load_per_core": (float, int, type(None))}

    def __init__(self, folder: Path):
        self.folder = folder

    @classmethod
    def default(cls) -> ChoiceCache:
        from eacnet_core.infer.quantize import user_cache_dir

        return cls(user_cache_dir() / "choices")

    def path(self, fields: dict) -> Path:
        key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
        return self.folder / f"{fields['model']}-{key}.json"

    def load(self, fields: dict, busy_load: Optional[float] = None) -> Optional[dict]:
        """The record for ``fields``; None (measure) when there is none or it cannot be trusted,
        as one measured above ``busy_load`` (per core) cannot."""
        path = self.path(fields)
        if not path.is_file():
            self._note_earlier_versions(fields)
            return None
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            return self._ignore(path, f"unreadable: {exc}")
        if not isinstance(record, dict) or record.get("fields") != fields:
            return self._ignore(path, "its fields do not match")
        if record.get("choice") not in fields["candidates"]:
            return self._ignore(path, f"its choice {record.get('choice')!r} is not a candidate")
        wrong = [k for k, kinds in self.SHAPE.items() if k not in record or not isinstance(record[k], kinds)]
        if wrong:
            return self._ignore(path, f"missing or malformed: {', '.join(wrong)}")
        load = record["load_per_core"]
        if busy_load is not None and load is not None and load > busy_load:
            return self._ignore(path, f"measured on a busy machine, load {load:.2f} per core")
        return record

    def store(self, fields: dict, choice: str, ms: dict, agreement: dict, dropped: list,
              load_per_core: Optional[float] = None) -> Optional[Path]:
        """Atomically; a read-only cache folder only costs the next start its timing.
        ``load_per_core``: the machine's load while ``ms`` were measured (None: not known)."""
        record = {"fields": fields, "choice": choice, "ms": ms, "agreement": agreement, "dropped": dropped,
                  "load_per_core": None if load_per_core is None else round(load_per_core, 3),
                  "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            return write_bytes(self.path(fields), json.dumps(record, indent=1, sort_keys=True).encode())
        except OSError as exc:
            log.warning("choice cache: cannot write in %s (%s): the next start times again", self.folder, exc)
            return None

    def _ignore(self, path: Path, why: str) -> None:
        log.info("choice cache: ignoring %s (%s); measuring again", path, why)

    def _note_earlier_versions(self, fields: dict) -> None:
        """Records of an earlier version live under other names (the version is part of the
        key) and are never read: say so for those of this situation, which the measurement
        about to run replaces."""
        same = {k: v for k, v in fields.items() if k != "version"}
        for path in sorted(self.folder.glob(f"{fields['model']}-*.json")):
            try:
                old = json.loads(path.read_text())["fields"]
                if old["version"] == RECORD_VERSION or {k: v for k, v in old.items() if k != "version"} != same:
                    continue
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not this situation's record, as far as can be read
            self._ignore(path, f"a version {old['version']} record, which may have been measured on a busy machine")
