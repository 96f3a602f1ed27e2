"""Where data lives: the one data-root rule, used by every command (train, eval, int8
calibration, demo, the benchmarks) and by the tests.

CamVid is found in this order: ``--data-root`` (the CamVid folder or one holding ``CamVid/``),
``$EACNET_DATA`` (the same), then ``../shared/data/CamVid`` from the current folder, then from
the source tree. Other datasets have no default: the user says where they are.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from eacnet_core.data.datasets import DatasetError

#: The environment variable naming the CamVid copy, or a folder that holds it as ``CamVid/``.
DATA_ENV = "EACNET_DATA"
#: Where a checkout beside a shared data folder finds CamVid (from the current folder, then the source tree).
SHARED_CAMVID = Path("..") / "shared" / "data" / "CamVid"
#: The checkout this package runs from (in a source or editable install).
SOURCE_TREE = Path(__file__).resolve().parents[2]
CAMVID_SPLITS = ("train", "val", "test")
#: The order above in words, for --help.
CAMVID_LOOKUP = f"${DATA_ENV} (or its CamVid/), else ../shared/data/CamVid"
DATA_ROOT_HELP = f"dataset folder (camvid default: {CAMVID_LOOKUP})"


def holds_camvid(folder: Path) -> bool:
    """Whether ``folder`` is CamVid in the SegNet layout: a ``train/``, ``val/`` or ``test/``
    folder (annotations are the commands' concern: a calibration needs none, eval does)."""
    return any((folder / split).is_dir() for split in CAMVID_SPLITS)


def as_camvid(folder: str | os.PathLike) -> Optional[Path]:
    """``folder`` itself or its ``CamVid/`` child, whichever holds CamVid; else None."""
    folder = Path(folder).expanduser()
    return next((c for c in (folder, folder / "CamVid") if holds_camvid(c)), None)


def camvid_candidates() -> list[Path]:
    """Where CamVid is looked for without ``--data-root``, in order: ``$EACNET_DATA``, then
    ``../shared/data/CamVid`` from the current folder, then from the source tree."""
    roots = [Path(os.environ[DATA_ENV])] if os.environ.get(DATA_ENV) else []
    roots += [Path.cwd() / SHARED_CAMVID, SOURCE_TREE / SHARED_CAMVID]
    return roots


def find_camvid(data_root: Optional[str | os.PathLike] = None) -> Optional[Path]:
    """The CamVid folder: of ``data_root`` when given (itself or its ``CamVid/``), else of the
    first of ``camvid_candidates`` that holds it; None when none does. The one home of the
    documented order, used by every command (train, eval, int8 calibration, demo, the
    benchmarks) and by the tests; only the demo adds a download after it."""
    for root in [Path(data_root)] if data_root else camvid_candidates():
        found = as_camvid(root)
        if found is not None:
            return found.resolve()
    return None


def default_data_root(kind: str, data_root: Optional[str | os.PathLike] = None) -> Path:
    """The data folder a command reads: ``--data-root`` (``data_root``; for CamVid also a
    folder holding ``CamVid/``), else for CamVid ``find_camvid``'s answer. Other datasets
    have no default: the user says where they are."""
    if kind == "camvid":
        found = find_camvid(data_root)
        if found is not None:
            return found
        if data_root:  # the dataset reader names what is missing there
            return Path(data_root).expanduser()
        looked = ", ".join(str(p) for p in camvid_candidates())
        raise DatasetError(f"no CamVid data root: pass --data-root PATH (or set {DATA_ENV} to the CamVid folder or "
                           f"one holding CamVid/); looked in {looked}")
    if data_root:
        return Path(data_root).expanduser()
    raise DatasetError(f"dataset {kind!r} needs --data-root PATH")
