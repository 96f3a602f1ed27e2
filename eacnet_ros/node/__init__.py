"""The segmentation node: process entry and signals (``main``, ``process``), the plain and the
managed node (``segment_node``, ``segment_lifecycle_node``, the only modules here importing
rclpy), and the ROS-free parts they wire together: parameters (``params``), the model
(``model``), input QoS (``qos``), the per-frame pipeline (``pipeline``), the frame worker and
the several-camera scheduler (``worker``, ``scheduler``), diagnostics (``stats``) and the
message codec (``codec``)."""
