"""label_info of eacnet_ros.node.segment_node, against ``rclpy_double`` (see its docstring: a
recording test double, not a ROS implementation).

Everything else the node does runs on the real ROS 2 middleware in test_node_real.py (the
node in this process: topics, QoS, frames, drops, bad frames, parameters over the services,
diagnostics, logging) and test_node_real_process.py (the node's process: start-up errors,
signals, frames from another process). What remains here is the one thing real rclpy cannot
show in the test environment: vision_msgs is not among the ROS wheels it installs, so no
real LabelInfo publisher can be created. The double stands in for rclpy with vision_msgs
present, and a CDR round trip checks the message against the real field layout.
"""

from __future__ import annotations

import importlib
import sys

import pytest
import rclpy_double as ros

from eacnet_core.classes import CAMVID
from eacnet_ros.node.model import LABEL_THRESHOLD

MSG = ros.MSG
SMALL_MODEL = {"backbone": "dabnet", "attention": "none", "threads": 1, "backend": "torch", "device": "cpu",
               "inference_height": 16, "inference_width": 24}


def _forget_node_module():
    sys.modules.pop("eacnet_ros.node.segment_node", None)
    import eacnet_ros.node

    eacnet_ros.node.__dict__.pop("segment_node", None)


@pytest.fixture
def node(monkeypatch):
    """A SegmentNode built against the double with vision_msgs; the module bound to the
    double is forgotten afterwards so no other test sees it."""
    for name, module in ros.modules(with_vision_msgs=True).items():
        monkeypatch.setitem(sys.modules, name, module)
    sys.modules.pop("eacnet_ros.node.segment_node", None)
    module = importlib.import_module("eacnet_ros.node.segment_node")
    try:
        ros.init(args=[])
        created = module.SegmentNode(namespace="/eacnet",
                                     parameter_overrides=[ros.Parameter(k, v) for k, v in SMALL_MODEL.items()])
        yield created
        created.destroy_node()
    finally:
        _forget_node_module()


def test_label_info_is_latched_once_with_the_class_names(node):
    (publisher,) = [p for p in node.publishers if p.topic == "/eacnet/label_info"]
    assert publisher.msg_type is MSG["vision_msgs/msg/LabelInfo"]
    assert publisher.qos.durability is ros.DurabilityPolicy.TRANSIENT_LOCAL
    assert publisher.qos.reliability is ros.ReliabilityPolicy.RELIABLE and publisher.qos.depth == 1
    (msg,) = publisher.sent
    msg = ros.STORE.deserialize_cdr(ros.STORE.serialize_cdr(msg, msg.__msgtype__), msg.__msgtype__)
    assert [(c.class_id, c.class_name) for c in msg.class_map] == list(enumerate(CAMVID.class_names))
    assert msg.threshold == LABEL_THRESHOLD
    assert not [w for w in node.get_logger().messages("warning") if "vision_msgs" in w]
