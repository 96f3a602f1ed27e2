"""The training set held in device memory and augmented there, a batch at a time.

On a GPU the per-sample CPU pipeline (decode, cv2 resize/flip/crop, normalise, copy to
the device) cannot feed a small segmentation network: CamVid's 467 pairs (about 240 MB
as uint8) fit on the card many times over, so they are uploaded once and each batch is
cut out of them with one ``grid_sample`` (bilinear, images) and one gather (nearest,
labels).

The augmentation is ``transforms.TrainTransform``'s, draw for draw: the same per-sample
generator (``[seed, epoch, index]``), the same calls in the same order (scale from the
set, flip, crop corner), the same geometry (half-pixel-centred bilinear as cv2's
INTER_LINEAR, cv2's INTER_NEAREST index rule ``floor(dst * src / dst_size)`` for
labels), the same fill (0 after normalising = the mean colour; the ignore label). The
only difference is where the rounding happens: cv2 resizes uint8, this interpolates
normalised floats (test_device_augment bounds the difference).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from eacnet_core.data.datasets import SegmentationDataset
from eacnet_core.data.transforms import TrainTransform, random_crop_box


class DeviceTrainData:
    """Every training pair of ``dataset`` on ``device``; ``batch(indices, epoch)`` gives
    augmented ``(image float32 (B, 3, h, w), label int64 (B, h, w))`` for the crop h x w."""

    def __init__(self, dataset: SegmentationDataset, transform: TrainTransform, device: torch.device):
        if len(dataset) == 0:
            raise ValueError(f"{dataset.name}: no training images to put on {device}")
        pairs = [dataset.load(i) for i in range(len(dataset))]
        sizes = {label.shape for _, label in pairs}
        if len(sizes) != 1:
            shown = ", ".join(f"{w}x{h}" for h, w in sorted(sizes)[:4])
            raise ValueError(f"{dataset.name}: --data-on-device needs images of one size, found {shown} (WxH); "
                             "train without it")
        self.transform = transform
        self.seed = dataset.seed
        self.device = device
        self.height, self.width = sizes.pop()
        bgr = torch.from_numpy(np.stack([image for image, _ in pairs]))  # N, H, W, 3
        self.images = bgr.flip(-1).permute(0, 3, 1, 2).contiguous().to(device)  # RGB uint8, N, 3, H, W
        labels = np.stack([label for _, label in pairs])
        small = labels.min() >= 0 and labels.max() <= 255  # class ids and ignore as uint8: 8x less memory
        self.labels = torch.from_numpy(labels.astype(np.uint8 if small else np.int64)).to(device)
        self.mean = torch.tensor(transform.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.inv_std = (1.0 / torch.tensor(transform.std, dtype=torch.float32)).to(device).view(1, 3, 1, 1)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def nbytes(self) -> int:
        return self.images.numel() * self.images.element_size() + self.labels.numel() * self.labels.element_size()

    def draws(self, indices: Sequence[int], epoch: int) -> list[tuple[float, bool, int, int]]:
        """(scale, flip, top, left) per sample, drawn exactly as ``TrainTransform`` draws them."""
        tf, out = self.transform, []
        for index in indices:
            rng = np.random.default_rng([self.seed, epoch, int(index)])
            scale = float(tf.scales[int(rng.integers(0, len(tf.scales)))])
            flip = bool(tf.flip and rng.random() < 0.5)
            scaled_h, scaled_w = self._scaled(scale)
            top, left = random_crop_box(scaled_h, scaled_w, tf.crop_hw, rng)
            out.append((scale, flip, top, left))
        return out

    def _scaled(self, scale: float) -> tuple[int, int]:
        if scale == 1.0:
            return self.height, self.width
        return max(1, round(self.height * scale)), max(1, round(self.width * scale))

    def batch(self, indices: Sequence[int], epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        crop_h, crop_w = self.transform.crop_hw
        draws = self.draws(indices, epoch)
        # Per sample: crop rows/columns in the scaled (and flipped) image, as integers.
        scaled = torch.tensor([self._scaled(s) for s, _, _, _ in draws], dtype=torch.int64)  # B, 2 (h, w)
        corner = torch.tensor([(t, lft) for _, _, t, lft in draws], dtype=torch.int64)
        flips = torch.tensor([f for _, f, _, _ in draws])
        rows = corner[:, :1] + torch.arange(crop_h)  # B, h
        cols = corner[:, 1:] + torch.arange(crop_w)  # B, w
        valid = (rows < scaled[:, :1])[:, :, None] & (cols < scaled[:, 1:])[:, None, :]  # past the padded edge
        cols = torch.where(flips[:, None], scaled[:, 1:] - 1 - cols, cols)
        labels = self._labels(indices, rows, cols, scaled, valid)
        images = self._images(indices, rows, cols, scaled, valid)
        return images, labels

    def _labels(self, indices, rows, cols, scaled, valid) -> torch.Tensor:
        """cv2 INTER_NEAREST: source index floor(dst * src_size / dst_size), in integers."""
        src_rows = (rows.clamp(min=0) * self.height // scaled[:, :1]).clamp(max=self.height - 1)
        src_cols = (cols.clamp(min=0) * self.width // scaled[:, 1:]).clamp(max=self.width - 1)
        idx = torch.as_tensor(list(indices), dtype=torch.int64)
        dev = self.device
        picked = self.labels[idx.to(dev)[:, None, None], src_rows.to(dev)[:, :, None], src_cols.to(dev)[:, None, :]]
        picked = picked.long()
        return torch.where(valid.to(dev), picked, torch.full_like(picked, self.transform.ignore_index))

    def _images(self, indices, rows, cols, scaled, valid) -> torch.Tensor:
        """Bilinear with half-pixel centres (cv2 INTER_LINEAR; edges replicated), then the
        window past the scaled image's edge set to 0, the mean colour after normalising."""
        dev = self.device
        # Normalised grid coordinates (align_corners=False): (2 * (dst + 0.5) / dst_size) - 1.
        gy = (2.0 * (rows.double() + 0.5) / scaled[:, :1]) - 1.0  # B, h
        gx = (2.0 * (cols.double() + 0.5) / scaled[:, 1:]) - 1.0  # B, w
        grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1).float().to(dev)
        idx = torch.as_tensor(list(indices), dtype=torch.int64, device=dev)
        source = (self.images[idx].float() - self.mean) * self.inv_std
        out = F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return out * valid.to(dev)[:, None].to(out.dtype)
