"""The image subscription's QoS decisions (reliability auto follows the publishers) and
the incompatible-QoS warning text; ROS-free (the rclpy profiles are in ``segment_node``)."""

from __future__ import annotations

from collections.abc import Sequence

# ---------------------------------------------------------------------------- input QoS

RELIABLE, BEST_EFFORT = "reliable", "best_effort"


def initial_reliability(mode: str) -> str:
    """``auto`` starts best-effort: it matches every publisher, so nothing is incompatible
    before the publishers are known."""
    return BEST_EFFORT if mode == "auto" else mode


def follow_publishers(mode: str, current: str, publishers: Sequence[str]) -> str:
    """The subscription's reliability given the publishers' ones (``reliable`` /
    ``best_effort``), as ``ros2 bag record`` adapts: reliable when every publisher is
    (Fast DDS then repairs lost fragments of large frames, which best-effort loses),
    best-effort as soon as one is not (a reliable subscription cannot match it). With no
    publisher, or a fixed mode, nothing changes."""
    if mode != "auto" or not publishers:
        return current
    return RELIABLE if all(p == RELIABLE for p in publishers) else BEST_EFFORT


def incompatible_qos_text(topic: str, policy: str, ours: str, theirs: Sequence[str], we_publish: bool) -> str:
    """The one warning for an incompatible-QoS event: topic, both sides, and the fix."""
    others = ", ".join(theirs) or "unknown"
    if we_publish:
        return (f"a subscriber of {topic} asks for QoS this node does not offer ({policy}): the node publishes "
                f"{ours}; the subscriber(s): {others}. Fix: subscribe with reliability reliable or best_effort "
                "and durability volatile (rviz: Durability Policy 'Volatile')")
    return (f"the publishers of {topic} and this node's subscription have incompatible QoS ({policy}): the node "
            f"asks for {ours}; the publisher(s) offer {others}. No frame can arrive. Fix: -p reliability:=auto "
            "(follows the publishers) or the publishers' policy")


def endpoint_owner(node_name: str, node_namespace: str) -> str:
    """The node behind a graph endpoint, for the incompatible-QoS warning. rmw reports an
    unknown name (``_NODE_NAME_UNKNOWN_``) until the remote participant's node list has
    arrived, which is the case right after a ROS tool (``ros2 topic echo``) or node starts,
    and always for a plain DDS program: it is not "without a node name", only not known yet."""
    if "UNKNOWN" in node_name:
        return "an endpoint whose ROS node is not known yet (a tool or node that has just started, or plain DDS)"
    return f"{node_namespace.rstrip('/')}/{node_name}"

