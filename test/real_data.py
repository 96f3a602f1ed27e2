"""Where the real CamVid copy is for the tests that use it: where every command looks
(``eacnet_core.data.roots.find_camvid``: ``$EACNET_DATA`` or its ``CamVid/`` child, else
``../shared/data/CamVid``). Tests marked ``needs_real_camvid`` skip when it is not there
with its train and val splits."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pytest

from eacnet_core.data.roots import CAMVID_LOOKUP, find_camvid


def find_real_camvid() -> Optional[Path]:
    root = find_camvid()
    needed = ("train", "trainannot", "val", "valannot")
    return root if root is not None and all((root / name).is_dir() for name in needed) else None


REAL_CAMVID = find_real_camvid()
needs_real_camvid = pytest.mark.skipif(REAL_CAMVID is None, reason=f"no CamVid with train and val at {CAMVID_LOOKUP}")
