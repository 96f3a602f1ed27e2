"""Writing files without losing data: the one atomic-write helper, and the checks every
command runs on its outputs before it writes anything.

Atomic writes: the bytes go to a temporary file with a unique name in the target's own
folder (``mkstemp`` creates it exclusively, so a symlink planted under a predictable name is
never followed and two writers never share one), are flushed and fsynced, get an ordinary
file's permissions (umask applied) and are renamed over the target. A crash leaves the old
file or the new one, never half of one; a failure removes the temporary file. Checkpoints,
JSON, reports, prediction masks, slim checkpoints, ONNX graphs and downloads all go through
``atomic_write``.

Output checks (``check_outputs``, ``check_output_folder``): an output never lands on an
input (paths resolved, symlinks followed), never replaces an existing file unless the user
passed ``--overwrite``, and two outputs of one run never share a path; a folder of outputs is
never a folder the inputs are read from. Each failure is an ``OutputError`` naming the path
and the way out, raised before the first byte is written.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

PathLike = str | os.PathLike


class OutputError(ValueError):
    """An output that would destroy data or collide; the message names the path and the fix."""


# ====================================================================== atomic writes
def atomic_write(path: PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(file)`` on a fresh temporary file beside ``path``, fsync it and rename it
    over ``path``. The parent folder is created when missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; an output is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def write_bytes(path: PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def write_text(path: PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: PathLike, data: Any) -> Path:
    """Indented JSON with a final newline; a reader never sees half of it."""
    return write_text(path, json.dumps(data, indent=2) + "\n")


def write_image(path: PathLike, image: np.ndarray) -> Path:
    """An image in the format its suffix names (.png, .jpg...), encoded by OpenCV in memory
    and then written atomically."""
    import cv2

    path = Path(path)
    ok, encoded = cv2.imencode(path.suffix or ".png", image)
    if not ok:
        raise OSError(f"OpenCV could not encode an image of shape {image.shape} as {path.suffix or '.png'}: {path}")
    return write_bytes(path, encoded.tobytes())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable; best effort (not every platform opens folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ====================================================================== output checks
def real_path(path: PathLike) -> Path:
    """The absolute path with every symlink followed (also for paths that do not exist yet)."""
    return Path(os.path.realpath(path))


def check_outputs(outputs: Iterable[PathLike], inputs: Iterable[PathLike] = (), overwrite: bool = False) -> None:
    """Refuse, before anything is written: an output that is one of the inputs (even with
    ``overwrite``), two outputs that are the same file, an output that is a folder, and an
    existing output without ``overwrite``."""
    sources = {real_path(p): Path(p) for p in inputs}
    planned: dict[Path, Path] = {}
    for out in map(Path, outputs):
        real = real_path(out)
        if real in sources:
            raise OutputError(f"output {out} is the input {sources[real]}; choose another output path")
        if real in planned:
            raise OutputError(f"two outputs of this run would both be written to {out} "
                              f"({planned[real]} and {out}); give them different paths")
        planned[real] = out
        if real.is_dir():
            raise OutputError(f"output {out} is a folder; expected a file path")
        if not overwrite and os.path.lexists(out):
            raise OutputError(f"output {out} exists; pass --overwrite to replace it")


def check_output_folder(folder: PathLike, input_folders: Iterable[PathLike], option: str = "--out") -> None:
    """A folder of outputs must not be a folder the inputs are read from: the outputs could
    replace inputs, and the next run would read them as inputs."""
    real = real_path(folder)
    for source in input_folders:
        if real == real_path(source):
            raise OutputError(f"{option} {folder} is the input folder {source}: outputs would mix with (or replace) "
                              "the inputs; choose another folder")
