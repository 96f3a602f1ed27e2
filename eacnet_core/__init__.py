"""EACNet real-time semantic segmentation: networks, data, training, evaluation and inference.

ROS-free by design: nothing here imports rclpy or ``eacnet_ros``.
"""

__version__ = "0.1.0"

#: What ``from eacnet_core import NAME`` offers, and the module that defines it. Imported on first
#: use, so importing the package (the node's entry point does, for the version) loads no torch.
_PUBLIC = {
    "Segmenter": "eacnet_core.infer.segmenter",
    "SegmenterOptions": "eacnet_core.infer.segmenter",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'eacnet_core' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_PUBLIC[name]), name)
