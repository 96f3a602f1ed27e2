"""EACNet real-time semantic segmentation: networks, data, training, evaluation and inference.

ROS-free by design: nothing here imports rclpy or ``eacnet_ros``.
"""

__version__ = "0.1.0"
