"""eacnet_ros: one ament_python package, installable with pip and buildable with colcon.

Python dependencies are declared here once. OpenCV is only required from PyPI when no
OpenCV is importable: on a ROS 2 machine ``python3-opencv`` (package.xml) provides cv2,
and a second, pip-installed copy would shadow it.
"""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "eacnet_ros"


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
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.rviz")),
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
        "test": ["pytest>=7", "ruff>=0.4", "onnx>=1.14", "onnxruntime>=1.16"],
    },
    zip_safe=True,
    maintainer="eacnet_ros developers",
    maintainer_email="eacnet-ros@example.com",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "eacnet = eacnet_ros.cli:main",
            "segment_node = eacnet_ros.segment_node:main",
        ],
    },
)
