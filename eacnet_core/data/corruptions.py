"""Image corruptions for ``eacnet bench-confidence``: what a camera on a vehicle meets.

Implemented here with numpy and OpenCV following the definitions of the ``imagecorruptions``
package (Michaelis et al. 2019, after Hendrycks & Dietterich's ImageNet-C), whose constants
are used at each severity 1-5. The package itself is not a dependency: it calls scikit-image
and SciPy functions that current releases removed or renamed. Two corruptions are not in it:
``darkness`` is its ``brightness`` mirrored (the HSV value lowered instead of raised, by the
same amounts), and ``covered`` replaces the left half of the frame with a uniform mud-brown
smear (a lens half covered by dirt), the same at every severity.

Every function takes a BGR uint8 image, a severity and a numpy Generator, and returns a BGR
uint8 image of the same size.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(x * 255.0, 0, 255).round().astype(np.uint8)


def gaussian_noise(bgr: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = [0.08, 0.12, 0.18, 0.26, 0.38][severity - 1]
    x = bgr / 255.0
    return _to_uint8(x + rng.normal(size=x.shape, scale=c))


def _disk(radius: float, alias_blur: float) -> np.ndarray:
    if radius <= 8:
        span, ksize = np.arange(-8, 8 + 1), (3, 3)
    else:
        span, ksize = np.arange(-radius, radius + 1), (5, 5)
    xs, ys = np.meshgrid(span, span)
    disk = ((xs ** 2 + ys ** 2) <= radius ** 2).astype(np.float32)
    disk /= disk.sum()
    return cv2.GaussianBlur(disk, ksize=ksize, sigmaX=alias_blur)


def defocus_blur(bgr: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)][severity - 1]
    return _to_uint8(cv2.filter2D((bgr / 255.0).astype(np.float32), -1, _disk(*c)))


def darkness(bgr: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = [0.1, 0.2, 0.3, 0.4, 0.5][severity - 1]
    hsv = cv2.cvtColor((bgr / 255.0).astype(np.float32), cv2.COLOR_BGR2HSV)
    hsv[..., 2] = np.clip(hsv[..., 2] - c, 0, 1)
    return _to_uint8(cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR))


def plasma_fractal(mapsize: int, wibbledecay: float, rng: np.random.Generator) -> np.ndarray:
    """A (mapsize, mapsize) diamond-square fractal in [0, 1] (``mapsize`` a power of 2)."""
    maparray = np.zeros((mapsize, mapsize), np.float64)
    stepsize, wibble = mapsize, 100.0

    def wibbledmean(array: np.ndarray) -> np.ndarray:
        return array / 4 + wibble * rng.uniform(-wibble, wibble, array.shape)

    while stepsize >= 2:
        half = stepsize // 2
        corners = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        squares = corners + np.roll(corners, shift=-1, axis=0)
        squares += np.roll(squares, shift=-1, axis=1)
        maparray[half:mapsize:stepsize, half:mapsize:stepsize] = wibbledmean(squares)
        down_right = maparray[half:mapsize:stepsize, half:mapsize:stepsize]
        up_left = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        left = down_right + np.roll(down_right, 1, axis=0) + up_left + np.roll(up_left, -1, axis=1)
        maparray[0:mapsize:stepsize, half:mapsize:stepsize] = wibbledmean(left)
        top = down_right + np.roll(down_right, 1, axis=1) + up_left + np.roll(up_left, -1, axis=0)
        maparray[half:mapsize:stepsize, 0:mapsize:stepsize] = wibbledmean(top)
        stepsize //= 2
        wibble /= wibbledecay
    maparray -= maparray.min()
    return maparray / maparray.max()


def fog(bgr: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = [(1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)][severity - 1]
    height, width = bgr.shape[:2]
    mapsize = 1 << int(np.ceil(np.log2(max(height, width))))
    x = bgr / 255.0
    peak = x.max()
    x = x + c[0] * plasma_fractal(mapsize, c[1], rng)[:height, :width, None]
    return _to_uint8(x * peak / (peak + c[0]))


def contrast(bgr: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = [0.4, 0.3, 0.2, 0.1, 0.05][severity - 1]
    x = bgr / 255.0
    means = x.mean(axis=(0, 1), keepdims=True)
    return _to_uint8((x - means) * c + means)


def jpeg(bgr: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    quality = [25, 18, 15, 10, 7][severity - 1]
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return cv2.imdecode(data, cv2.IMREAD_COLOR)


#: BGR of the smear of ``covered``.
MUD_BGR = (45, 70, 95)


def covered(bgr: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    out = bgr.copy()
    out[:, : bgr.shape[1] // 2] = MUD_BGR
    return out


#: The corruptions the benchmark applies, by name; fog and contrast are both contrast losses.
CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise, "defocus_blur": defocus_blur, "darkness": darkness, "fog": fog,
    "contrast": contrast, "jpeg": jpeg, "covered": covered,
}


def corrupt(bgr: np.ndarray, name: str, severity: int = 3, seed: int = 0) -> np.ndarray:
    """``bgr`` with corruption ``name`` at ``severity`` (1-5), reproducible by ``seed``."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    if not 1 <= severity <= 5:
        raise ValueError(f"severity must be 1-5, got {severity}")
    return CORRUPTIONS[name](bgr, severity, np.random.default_rng(seed))
