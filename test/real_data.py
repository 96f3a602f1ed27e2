"""Where the real CamVid copy is for the tests that use it: ``$EACNET_DATA`` (the variable
the tools read) or its ``CamVid/`` child, else ``../shared/data/CamVid`` beside the
repository. Tests marked ``needs_real_camvid`` skip when neither holds it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import pytest

REPO = Path(__file__).resolve().parents[1]


def find_real_camvid() -> Optional[Path]:
    roots = [Path(os.environ["EACNET_DATA"])] if os.environ.get("EACNET_DATA") else []
    roots.append(REPO.parent / "shared" / "data" / "CamVid")
    for root in roots:
        for folder in (root, root / "CamVid"):
            if all((folder / name).is_dir() for name in ("train", "trainannot", "val", "valannot")):
                return folder
    return None


REAL_CAMVID = find_real_camvid()
needs_real_camvid = pytest.mark.skipif(REAL_CAMVID is None,
                                       reason="no CamVid (SegNet layout) at $EACNET_DATA or ../shared/data/CamVid")
