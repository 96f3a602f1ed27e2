"""ROS 2 layer of EACNet, in rooms by purpose: the segmentation node (``node``), the rosbag2
tools (``bags``), the benchmarks (``bench``), plus the ``eacnet`` command line (``cli``) and
the CamVid demo (``demo``).

Only ``node.segment_node`` and ``node.segment_lifecycle_node`` (and ``bench.dds``, a
benchmark) import rclpy; everything else runs without a ROS install."""
