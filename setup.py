"""eacnet_ros: one ament_python package, installable with pip and buildable with colcon.

Python dependencies are declared here once. OpenCV is only required from PyPI when no
OpenCV is importable: on a ROS 2 machine ``python3-opencv`` (package.xml) provides cv2,
and a second, pip-installed copy would shadow it.
"""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "eacnet_ros"


def _linux_x86_64(*wheels: str) -> list:
    """The ROS 2 wheels exist for Linux x86_64 only."""
    return [f"{wheel}; platform_system == 'Linux' and platform_machine == 'x86_64'" for wheel in wheels]


def opencv_requirement() -> list:
    try:
        import cv2  # noqa: F401
    except ImportError:
        return ["opencv-python-headless>=4.5"]
    return []


setup(
    name=PACKAGE,
    version="0.1.0",
    description="EACNet real-time semantic segmentation for ROS 2 camera streams, with a ROS-free core library",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["eacnet_core", "eacnet_core.*", "eacnet_ros", "eacnet_ros.*"]),
    package_data={"eacnet_core": ["weights/*.pt", "weights/*.md"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.rviz") + glob("config/*.xml")),
    ],
    install_requires=[
        "setuptools",
        "numpy>=1.21",
        "torch>=2.1",
        "rosbags>=0.10",
        "pyyaml>=5.4",
        "tqdm>=4.60",
        "matplotlib>=3.5",
    ] + opencv_requirement(),
    extras_require={
        "onnx": ["onnx>=1.14", "onnxruntime>=1.16"],
        # OpenVINO's CPU plugin as a backend (fastest for the DABNet models on our CPU; docs/RESULTS.md).
        "openvino": ["openvino>=2024.0", "nncf>=2.10", "onnx>=1.14", "onnxruntime>=1.16"],
        # ROS 2 (Kilted) from PyPI wheels, for running and testing the node without a ROS install:
        # what segment_node and the launch file import, plus the middleware that rclpy loads at
        # run time (no package depends on it). One release, pinned: the message packages and rclpy
        # must come from the same one; Linux x86_64 is the only platform with wheels. launch and
        # launch_ros have no wheels: scripts/setup.sh installs them from ../shared/ros-launch.
        "ros": (ros := _linux_x86_64(
            "ros-rclpy==9.1.2", "ros-rcl-interfaces==2.3.0", "ros-sensor-msgs==5.5.1", "ros-std-msgs==5.5.1",
            "ros-diagnostic-msgs==5.5.1", "ros-lifecycle-msgs==2.3.0", "ros-ament-index-python==1.11.0",
            "ros-rmw-fastrtps-cpp==9.3.3")),
        # The same set from ROS 2 Jazzy, the LTS release (Fast DDS 2.14): CI runs the real-ROS tests
        # on it too (scripts/test_jazzy.sh), in a virtual environment of its own (the two sets
        # cannot share one).
        "ros-jazzy": (ros_jazzy := _linux_x86_64(
            "ros-rclpy==7.1.6", "ros-rcl-interfaces==2.0.3", "ros-sensor-msgs==5.3.6", "ros-std-msgs==5.3.6",
            "ros-diagnostic-msgs==5.3.6", "ros-lifecycle-msgs==2.0.3", "ros-ament-index-python==1.8.1",
            "ros-rmw-fastrtps-cpp==8.4.3")),
        # With the ROS wheels, so CI runs the node and the launch file on real rclpy; colcon and
        # ament_package (both on the package index) so it also builds the package as a ROS user
        # does (test/test_ros2_workflow.py, docs/ROS.md).
        "test": (test := ["pytest>=7", "pytest-xdist>=3", "ruff>=0.4", "onnx>=1.14", "onnxruntime>=1.16",
                          "openvino>=2024.0", "nncf>=2.10", "colcon-common-extensions>=0.3"])
        + ["ros-ament-package>=0.17"] + ros,
        # The test tools with the Jazzy set (and Jazzy's ament_package).
        "test-jazzy": test + ["ros-ament-package==0.16.4"] + ros_jazzy,
    },
    zip_safe=True,
    maintainer="eacnet_ros developers",
    maintainer_email="eacnet-ros@example.com",
    entry_points={
        "console_scripts": [
            "eacnet = eacnet_ros.cli:main",
            "segment_node = eacnet_ros.node.main:main",
            "segment_lifecycle_node = eacnet_ros.node.main:lifecycle_main",
        ],
    },
)
