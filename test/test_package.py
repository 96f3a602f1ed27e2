"""Packaging of the ROS side: package.xml, setup.py's installed files, the parameter YAML,
the rviz config, and ruff on the code that ships (launch/, eacnet_ros/, test/)."""

from __future__ import annotations

import ast
import runpy
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import setuptools
import yaml

from eacnet_ros.node.params import PARAMETERS, NodeConfig

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "eacnet_ros"


@pytest.fixture(scope="module")
def setup_kwargs():
    """What setup.py passes to setuptools.setup, without building anything."""
    captured = {}
    original = setuptools.setup
    setuptools.setup = lambda **kwargs: captured.update(kwargs)
    try:
        runpy.run_path(str(REPO / "setup.py"), run_name="__main__")
    finally:
        setuptools.setup = original
    return captured


# ---------------------------------------------------------------------------- package.xml

@pytest.fixture(scope="module")
def manifest() -> ET.Element:
    return ET.parse(REPO / "package.xml").getroot()


def test_package_xml_is_format_3_with_the_leading_elements_in_order(manifest):
    assert manifest.tag == "package" and manifest.get("format") == "3"
    order = [child.tag for child in manifest][:5]
    assert order == ["name", "version", "description", "maintainer", "license"]
    assert manifest.findtext("name") == PACKAGE
    assert manifest.find("maintainer").get("email")
    assert manifest.find("export").findtext("build_type") == "ament_python"


def test_package_xml_declares_what_the_node_and_launch_import(manifest):
    exec_depends = {e.text for e in manifest.findall("exec_depend")} | {e.text for e in manifest.findall("depend")}
    required = {"rclpy", "rcl_interfaces", "sensor_msgs", "std_msgs", "vision_msgs", "diagnostic_msgs", "launch",
                "launch_ros", "lifecycle_msgs", "ament_index_python", "python3-numpy", "python3-opencv",
                "python3-yaml", "ros2bag", "rviz2"}
    assert required <= exec_depends, f"missing: {sorted(required - exec_depends)}"
    test_depends = {e.text for e in manifest.findall("test_depend")}
    assert {"launch_testing", "launch_testing_ros", "python3-pytest"} <= test_depends


def test_package_xml_and_setup_py_agree_on_the_version(manifest, setup_kwargs):
    assert manifest.findtext("version") == setup_kwargs["version"]


# ---------------------------------------------------------------------------- setup.py

def test_setup_installs_launch_config_and_the_ament_marker(setup_kwargs):
    data = {dest: sorted(files) for dest, files in setup_kwargs["data_files"]}
    assert data[f"share/{PACKAGE}/launch"] == ["launch/segment.launch.py"]
    assert {"config/segment.yaml", "config/segment.rviz"} <= set(data[f"share/{PACKAGE}/config"])
    assert data["share/ament_index/resource_index/packages"] == [f"resource/{PACKAGE}"]
    assert data[f"share/{PACKAGE}"] == ["package.xml"]
    for files in data.values():
        for file in files:
            assert (REPO / file).is_file(), file


def test_console_script_points_at_the_light_entry_point(setup_kwargs):
    """segment_node starts in node.main, which installs the signal handlers before it
    imports anything heavy (rclpy, torch): a SIGTERM during those seconds must exit 0."""
    scripts = dict(s.replace(" ", "").split("=") for s in setup_kwargs["entry_points"]["console_scripts"])
    assert scripts["segment_node"] == "eacnet_ros.node.main:main"
    assert scripts["segment_lifecycle_node"] == "eacnet_ros.node.main:lifecycle_main"
    tree = ast.parse((REPO / "eacnet_ros" / "node" / "main.py").read_text())
    top_level_imports = {alias.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for alias in n.names}
    top_level_imports |= {(n.module or "").split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom)}
    assert not top_level_imports & {"rclpy", "torch", "cv2", "numpy", "eacnet_core"}
    assert {"main", "lifecycle_main"} <= {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}


def test_ros2_run_finds_the_executables():
    """ament_python: console scripts must land in lib/<package> for `ros2 run`."""
    text = (REPO / "setup.cfg").read_text()
    assert f"script_dir=$base/lib/{PACKAGE}" in text and f"install_scripts=$base/lib/{PACKAGE}" in text


def test_only_the_nodes_and_the_dds_bench_import_rclpy():
    """Everything else (codec, the node's logic, bags, eacnet_core) runs without ROS."""
    importers = []
    for path in sorted((REPO / "eacnet_ros").rglob("*.py")) + sorted((REPO / "eacnet_core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n == "rclpy" or n.startswith("rclpy.") for n in names):
                importers.append(path.relative_to(REPO).as_posix())
    assert sorted(set(importers)) == ["eacnet_ros/bench/dds.py", "eacnet_ros/node/segment_lifecycle_node.py",
                                      "eacnet_ros/node/segment_node.py"]


# ---------------------------------------------------------------------------- config files

def test_yaml_lists_every_parameter_with_its_default():
    data = yaml.safe_load((REPO / "config" / "segment.yaml").read_text())
    params = data["/**"]["ros__parameters"]
    defaults = {spec.name: spec.default for spec in PARAMETERS}
    assert params == defaults
    assert {k: type(v) for k, v in params.items()} == {k: type(v) for k, v in defaults.items()}  # 0.5 not 1
    NodeConfig.from_values(params)  # and they validate


def test_rviz_config_shows_camera_overlay_and_colour_mask():
    config = yaml.safe_load((REPO / "config" / "segment.rviz").read_text())
    displays = config["Visualization Manager"]["Displays"]
    assert [d["Class"] for d in displays] == ["rviz_default_plugins/Image"] * 3
    assert [d["Topic"]["Value"] for d in displays] == ["/camera/image_raw", "/eacnet/overlay", "/eacnet/color_mask"]
    assert all(d["Enabled"] and d["Topic"]["Reliability Policy"] == "Best Effort" for d in displays)
    panels = config["Window Geometry"]
    assert all(d["Name"] in panels for d in displays)  # each image gets its own dock panel


# ---------------------------------------------------------------------------- README

def readme() -> str:
    return (REPO / "README.md").read_text()


def test_readme_python_range_is_what_setup_sh_checks_and_setup_py_allows(setup_kwargs):
    import re

    low, high = re.search(r"Python 3\.(\d+) to 3\.(\d+)", readme()).groups()
    setup_sh = (REPO / "scripts" / "setup.sh").read_text()
    assert f"(3, {low}) <= sys.version_info[:2] <= (3, {high})" in setup_sh
    assert f"Python 3.{low}-3.{high} is required" in setup_sh
    assert setup_kwargs["python_requires"] == f">=3.{low}"


def test_readme_layout_names_every_module():
    import re

    layout = readme().split("## Layout", 1)[1]
    named = set(re.findall(r"[a-z_]+", layout))
    for package in ("eacnet_core", "eacnet_ros"):
        modules = {p.stem for p in (REPO / package).rglob("*.py") if p.stem != "__init__"}
        modules |= {p.parent.name for p in (REPO / package).rglob("*/__init__.py")}
        assert modules <= named, f"README Layout misses {sorted(modules - named)} of {package}"


def test_readme_launch_arguments_are_declared():
    """Every name:=value the README passes to segment.launch.py (not the node's own -r / -p
    arguments) is a launch argument."""
    import re

    launch = (REPO / "launch" / "segment.launch.py").read_text()
    declared = set(re.findall(r'Argument\("([a-z_]+)"', launch))
    used = set(re.findall(r"(?<!-r )(?<!-p )(?<![/\w])([a-z_]+):=", readme()))  # not -r a/b:= remaps
    assert used and used <= declared, sorted(used - declared)


# ---------------------------------------------------------------------------- lint

@pytest.mark.skipif(shutil.which("ruff") is None and not (Path(sys.executable).parent / "ruff").exists(),
                    reason="ruff is not installed")
def test_ruff_is_clean_on_launch_node_and_tests():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    result = subprocess.run([ruff, "check", "launch", "eacnet_ros", "test"], cwd=REPO, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------- layout

#: The rooms of eacnet_ros and their modules (besides ``__init__``).
ROOMS = {
    "": {"cli", "demo"},
    "node": {"main", "process", "segment_node", "segment_lifecycle_node", "params", "model", "qos", "pipeline",
             "worker", "scheduler", "stats", "codec", "choice", "steady"},
    "bags": {"io", "eval", "report", "cli"},
    "bench": {"pipeline", "dds", "bag_replay", "soak"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, prefix: str = "eacnet_ros") -> set[str]:
    """Every module of the package ``prefix`` that ``path`` imports, at any level (function
    bodies included)."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in found if name.startswith(prefix)}


def test_the_ros_side_is_in_rooms_by_purpose():
    found = {}
    for path in (REPO / PACKAGE).rglob("*.py"):
        room = path.parent.relative_to(REPO / PACKAGE).as_posix()
        found.setdefault("" if room == "." else room, set()).add(path.stem)
    assert {room: modules - {"__init__"} for room, modules in found.items()} == ROOMS
    assert all((REPO / PACKAGE / room / "__init__.py").is_file() for room in ROOMS)


def _import_graph(package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (a name imported from a module counts as
    the module; a package's own ``__init__`` above a module is not an edge)."""
    modules = {_module_name(p): p for p in (REPO / package).rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imports(path, package):
            while imported not in modules and "." in imported:
                imported = imported.rsplit(".", 1)[0]
            if imported in modules and imported != name and not name.startswith(imported + "."):
                targets.add(imported)
        graph[name] = targets
    return graph


@pytest.mark.parametrize("package", ["eacnet_ros", "eacnet_core"])
def test_no_import_cycles(package):
    """Function-level imports included: a cycle hidden in a function still ties the modules."""
    graph = _import_graph(package)
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == 1:
            raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(name):] + [name]))
        if state.get(name) == 2:
            return
        state[name] = 1
        for target in sorted(graph[name]):
            visit(target, trail + [name])
        state[name] = 2

    for name in sorted(graph):
        visit(name, [])


#: eacnet_core's floors, bottom up: a module imports only from its own floor or below, so data
#: flows one way (the shared helpers, data, the networks, checkpoints, inference, evaluation,
#: training, the command registry). A room is a floor of its own; ``None`` marks a top-level module.
CORE_FLOORS = (
    {"eacnet_core", "eacnet_core.options", "eacnet_core.outputs", "eacnet_core.progress", "eacnet_core.runtime"},
    {"eacnet_core.data"},
    {"eacnet_core.models"},
    {"eacnet_core.checkpoint"},
    {"eacnet_core.infer"},
    {"eacnet_core.evaluate"},
    {"eacnet_core.train"},
    {"eacnet_core.cli"},
)


def _core_floor(module: str) -> int:
    parts = module.split(".")
    for depth in (2, 1):
        place = ".".join(parts[:depth])
        for floor, places in enumerate(CORE_FLOORS):
            if place in places:
                return floor
    raise AssertionError(f"{module} is on no floor of CORE_FLOORS: add its room")


def test_the_core_is_in_rooms_and_no_import_runs_back_up():
    graph = _import_graph("eacnet_core")
    upward = sorted(f"{name} -> {target}" for name, targets in graph.items() for target in targets
                    if _core_floor(target) > _core_floor(name))
    assert not upward, upward
    rooms = {p.parent.name for p in (REPO / "eacnet_core").glob("*/__init__.py")}
    assert rooms == {"data", "models", "infer", "evaluate", "train"}
    for room in rooms:  # each room's __init__ says what lives there
        assert ast.get_docstring(ast.parse((REPO / "eacnet_core" / room / "__init__.py").read_text()))


# ---------------------------------------------------------------------------- docs/ROS.md

#: What test_ros2_workflow.py runs, as docs/ROS.md must show it.
WORKFLOW_COMMANDS = (
    "cp -r package.xml setup.py setup.cfg resource launch config eacnet_core eacnet_ros ws/src/eacnet_ros/",
    "colcon build --packages-select eacnet_ros", "source install/setup.bash",
    "export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_DOMAIN_ID=", "ros2 launch -n eacnet_ros segment.launch.py",
    "ros2 node info /eacnet/segment_node --spin-time 3", "ros2 param dump /eacnet/segment_node",
    "ros2 param get /eacnet/segment_node cameras", "ros2 param set /eacnet/segment_node overlay_alpha",
    "ros2 param describe /eacnet/segment_node overlay_alpha threads", "ros2 topic echo --once --no-arr /eacnet/mask",
    "ros2 topic hz /eacnet/mask --window 5", "ros2 lifecycle get /eacnet/segment_node", "ros2 daemon stop",
    *(f"ros2 lifecycle set /eacnet/segment_node {t}" for t in ("configure", "activate", "deactivate", "cleanup",
                                                               "shutdown")),
)


def test_the_ros_guide_shows_the_commands_the_workflow_test_runs():
    guide = (REPO / "docs" / "ROS.md").read_text()
    assert [c for c in WORKFLOW_COMMANDS if c not in guide] == []
    workflow = ast.parse((REPO / "test" / "test_ros2_workflow.py").read_text())
    (copied,) = [ast.literal_eval(n.value) for n in workflow.body if isinstance(n, ast.Assign)
                 and getattr(n.targets[0], "id", "") == "PACKAGE_CONTENTS"]
    assert f"cp -r {' '.join(copied)} ws/src/eacnet_ros/" in guide


def test_the_ros_guide_names_every_package_xml_dependency_as_a_rosdep_key(manifest):
    guide = (REPO / "docs" / "ROS.md").read_text().split("### rosdep keys")[1].split("## ")[0]
    keys = {e.text for e in manifest if e.tag.endswith("depend")}
    assert [k for k in sorted(keys) if f"`{k}`" not in guide] == []



def test_the_suites_file_order_names_files_that_exist():
    """conftest's LONGEST_FIRST orders the files across the workers; a renamed file would
    silently drop to the end of the queue."""
    from conftest import LONGEST_FIRST

    missing = [name for name in LONGEST_FIRST if not (REPO / "test" / name).is_file()]
    assert not missing and len(set(LONGEST_FIRST)) == len(LONGEST_FIRST), missing
