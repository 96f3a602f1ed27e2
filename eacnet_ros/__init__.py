"""ROS 2 layer of EACNet: message conversion, the segmentation node and rosbag2 tools.

Only ``segment_node`` imports rclpy; everything else runs without a ROS install."""
