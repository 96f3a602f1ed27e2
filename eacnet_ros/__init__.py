"""ROS 2 layer of EACNet: message conversion, the segmentation node and rosbag2 tools.

Only ``segment_node`` and ``segment_lifecycle_node`` (and ``dds_bench``, a benchmark) import
rclpy; everything else runs without a ROS install."""
