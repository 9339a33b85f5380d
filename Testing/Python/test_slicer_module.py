"""Checks of the Slicer module that run without Slicer.

3D Slicer cannot run here, so these tests check what the source shows. The
module and plugin compile, and every ``self.ui.<name>`` exists in the .ui
file. Every Slicer, Qt, CTK and VTK API the module uses is in
``slicer_api_calls.json``, which records the file that defines it and the
releases it was read in. The extension's build and catalog files have the
fields Slicer reads. The module's plain-Python helpers are tested for real,
against the test data and Orthanc. The module's own test class, which builds
a scene and exports it, runs inside Slicer.
"""

from __future__ import annotations

import ast
import json
import pathlib
import py_compile
import re
import sys
import threading
import types
import unittest
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from Media2DICOMLib import slicer_support
from Media2DICOMLib.errors import Media2DICOMError
from Media2DICOMLib.progress import Cancelled

REPOSITORY = Path(__file__).resolve().parents[2]
MODULE_DIR = REPOSITORY / "Media2DICOM"
MODULE_FILES = [MODULE_DIR / "Media2DICOM.py", MODULE_DIR / "Media2DICOMPlugin.py"]
UI_FILE = REPOSITORY / "Resources" / "UI" / "Media2DICOM.ui"
API_LIST = Path(__file__).resolve().parent / "slicer_api_calls.json"
CATALOG_ENTRY = REPOSITORY / "Media2DICOM.json"

# Modules whose names start an API path: Slicer's Python packages, the Qt, CTK
# and VTK wrappers, and the Slicer modules the code imports.
API_ROOTS = {"slicer", "qt", "ctk", "vtk", "ScreenCapture", "DICOMLib"}

# Class of the ``parent`` object Slicer passes to scripted module classes.
MODULE_PARENT_CLASS = "qSlicerScriptedLoadableModule"

# Method names of Python's own types and of unittest.TestCase: calls to them
# are not Slicer APIs even when they look like Qt's lowerCamelCase.
PYTHON_NAMES = set()
for _type in (
    str,
    list,
    dict,
    set,
    tuple,
    bytes,
    pathlib.Path,
    unittest.TestCase,
    threading.Thread,
    object,
):
    PYTHON_NAMES.update(dir(_type))


# Types of values returned by API calls whose results the module keeps in a
# variable, so later calls on that variable are recorded against the class.
RETURN_TYPES = {
    "slicer.util.loadUI": "qMRMLWidget",
    "slicer.app.layoutManager": "qSlicerLayoutManager",
    "slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode": (
        "slicer.vtkMRMLSubjectHierarchyNode"
    ),
    "qt.QColorDialog.getColor": "qt.QColor",
    "slicer.dicomDatabase": "ctk.ctkDICOMDatabase",
}

# Classes of the parameters and loop variables the module names consistently,
# so attributes used on them are recorded against the class.
NAME_TYPES = {
    "exportable": "slicer.qSlicerDICOMExportable",
    "segmentationNode": "slicer.vtkMRMLSegmentationNode",
    "segmentationDisplayNode": "slicer.vtkMRMLSegmentationDisplayNode",
    "segmentation": "slicer.vtkSegmentation",
    "segment": "slicer.vtkSegment",
    "modelNode": "slicer.vtkMRMLModelNode",
    "modelDisplayNode": "slicer.vtkMRMLModelDisplayNode",
    "volumeNode": "slicer.vtkMRMLScalarVolumeNode",
    "referenceVolumeNode": "slicer.vtkMRMLScalarVolumeNode",
    "dataNode": "slicer.vtkMRMLNode",
    "node": "slicer.vtkMRMLNode",
    "viewNode": "slicer.vtkMRMLAbstractViewNode",
    "sequenceBrowserNode": "slicer.vtkMRMLSequenceBrowserNode",
    "polyData": "vtk.vtkPolyData",
    "parentTransformNode": "slicer.vtkMRMLTransformNode",
    "comboBox": "qt.QComboBox",
    "listWidget": "qt.QListWidget",
}


def ui_widgets() -> dict:
    """Map each widget name in the .ui file to its class."""
    root = ElementTree.parse(UI_FILE).getroot()
    return {w.get("name"): w.get("class") for w in root.iter("widget")}


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text("utf-8"), filename=str(path))


def dotted_name(node) -> str | None:
    """Return ``a.b.c`` for a chain of attributes on a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def defined_names(tree: ast.Module) -> set:
    """Names the file defines: functions, classes, fields and ``self`` attributes."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            if isinstance(node.value, ast.Name) and node.value.id == "self":
                names.add(node.attr)
    return names


def import_aliases(tree: ast.Module):
    """Split imported names into API imports (with qualified names) and others."""
    api = {}
    other = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                local = alias.asname or alias.name.split(".")[0]
                if alias.name.split(".")[0] in API_ROOTS:
                    api[local] = alias.name if alias.asname else local
                else:
                    other.add(local)
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                local = alias.asname or alias.name
                if node.module.split(".")[0] in API_ROOTS:
                    api[local] = f"{node.module}.{alias.name}"
                else:
                    other.add(local)
    return api, other


def dicom_keywords() -> set:
    from pydicom.datadict import keyword_dict

    return set(keyword_dict)


class ApiCollector(ast.NodeVisitor):
    """Collect the Slicer, Qt, CTK and VTK APIs a module file uses.

    Three kinds of use are found:

    - chains that start at an imported API module, such as
      ``slicer.util.loadUI`` or ``vtk.vtkSTLWriter``;
    - attributes of ``self.ui.<widget>``, qualified by the widget's class from
      the .ui file, such as ``QTableWidget.setRowCount``, and of variables that
      hold an API object, such as ``vtk.vtkSTLWriter.SetHeader``;
    - other method calls and attributes named like C++ APIs (VTK and MRML
      ``UpperCamelCase``, Qt and CTK ``lowerCamelCase``), recorded by name
      alone, such as ``.GetSegmentation``, because their receiver's class is
      not visible in the source.

    Names the module files define, pydicom's DICOM keywords and attributes of
    other imported modules (the library, pydicom, the standard library) are
    not APIs of Slicer and are skipped.
    """

    def __init__(self, tree: ast.Module, widgets: dict, defined: set):
        self.aliases, self.other_imports = import_aliases(tree)
        self.defined = defined
        self.widgets = widgets
        self.keywords = dicom_keywords()
        self.variable_types: dict = {}
        self.apis: dict = {}
        self.ui_names: set = set()
        self.in_module_class = False

    def record(self, api: str, node) -> None:
        self.apis.setdefault(api, node.lineno)

    def qualify(self, name: str) -> str | None:
        head, _, rest = name.partition(".")
        if head in self.aliases:
            qualified = self.aliases[head]
            return f"{qualified}.{rest}" if rest else qualified
        return None

    def type_of_call(self, call: ast.Call) -> str | None:
        constructor = dotted_name(call.func)
        qualified = self.qualify(constructor) if constructor else None
        if qualified is None:
            return None
        if qualified.endswith("AddNewNodeByClass") and call.args:
            argument = call.args[0]
            if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                return f"slicer.{argument.value}"
        return RETURN_TYPES.get(qualified, qualified)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        bases = {dotted_name(base) for base in node.bases}
        outer = self.in_module_class
        # The module classes receive Slicer's module object as ``parent``.
        self.in_module_class = "ScriptedLoadableModule" in bases or (
            not node.bases and node.name.endswith("Plugin")
        )
        self.generic_visit(node)
        self.in_module_class = outer

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        saved = dict(self.variable_types)
        self.generic_visit(node)
        self.variable_types = saved

    def visit_Assign(self, node: ast.Assign) -> None:
        value_type = None
        if isinstance(node.value, ast.Call):
            value_type = self.type_of_call(node.value)
        elif isinstance(node.value, ast.Attribute):
            value_type = self.type_of_chain(dotted_name(node.value))
        for target in node.targets:
            name = dotted_name(target)
            if name and value_type:
                self.variable_types[name] = value_type
        self.generic_visit(node)

    def type_of_chain(self, name: str | None) -> str | None:
        """Return the class of a value read from ``self.ui`` or an API attribute."""
        if not name:
            return None
        parts = name.split(".")
        if parts[:2] == ["self", "ui"] and len(parts) == 3:
            return self.widgets.get(parts[2])
        qualified = self.qualify(name)
        return RETURN_TYPES.get(qualified) if qualified else None

    def visit_Name(self, node: ast.Name) -> None:
        # A name imported from an API module and used on its own, such as a
        # base class: ``class Plugin(DICOMPlugin)``.
        if node.id in self.aliases:
            self.record(self.aliases[node.id], node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        name = dotted_name(node)
        if name is not None and self.handle_chain(name, node):
            return
        self.handle_member(node)
        self.generic_visit(node)

    def handle_chain(self, name: str, node) -> bool:
        """Record a chain on an import, a typed variable, ``self.ui`` or ``parent``."""
        parts = name.split(".")
        if parts[0] in self.other_imports:
            return True
        if parts[:2] == ["self", "ui"] and len(parts) >= 3:
            self.ui_names.add(parts[2])
            if len(parts) >= 4:
                widget_class = self.widgets.get(parts[2], "?")
                self.record(f"{widget_class}.{parts[3]}", node)
            return True
        qualified = self.qualify(name)
        if qualified:
            self.record(qualified, node)
            return True
        for length in range(len(parts) - 1, 0, -1):
            receiver = ".".join(parts[:length])
            if receiver in self.variable_types:
                self.record(f"{self.variable_types[receiver]}.{parts[length]}", node)
                return True
        if parts[0] in NAME_TYPES and len(parts) >= 2:
            self.record(f"{NAME_TYPES[parts[0]]}.{parts[1]}", node)
            return True
        if self.in_module_class and parts[:-1] in (["parent"], ["self", "parent"]):
            self.record(f"{MODULE_PARENT_CLASS}.{parts[-1]}", node)
            return True
        return False

    def handle_member(self, node: ast.Attribute) -> None:
        member = node.attr
        if member in self.defined or member in PYTHON_NAMES or member.startswith("_"):
            return
        if member in self.keywords:
            return
        upper_camel = member[0].isupper() and any(c.islower() for c in member)
        lower_camel = member[0].islower() and any(c.isupper() for c in member)
        if upper_camel or lower_camel:
            self.record(f".{member}", node)


def collect_apis(path: Path, widgets: dict):
    defined = set()
    for module_file in MODULE_FILES:
        defined.update(defined_names(parse(module_file)))
    tree = parse(path)
    defined.update(defined_names(tree))
    collector = ApiCollector(tree, widgets, defined)
    collector.visit(tree)
    return collector


def load_api_list() -> dict:
    data = json.loads(API_LIST.read_text("utf-8"))
    return {entry["api"]: entry for entry in data["apis"]}


def listed(api: str, entries: dict) -> bool:
    """Match a collected API against the list; bare ``.name`` matches a method."""
    if api in entries:
        return True
    if api.startswith("."):
        return any(key.endswith(api) for key in entries)
    return False


@pytest.mark.parametrize("path", MODULE_FILES, ids=lambda p: p.name)
def test_module_files_compile(path, tmp_path):
    """The module and plugin files are valid Python."""
    py_compile.compile(str(path), cfile=str(tmp_path / "out.pyc"), doraise=True)


def test_ui_names_exist():
    """Every self.ui.<name> the module uses is a widget in the .ui file."""
    widgets = ui_widgets()
    collector = collect_apis(MODULE_DIR / "Media2DICOM.py", widgets)
    missing = sorted(collector.ui_names - set(widgets))
    assert collector.ui_names, "the module uses no self.ui widgets"
    assert not missing, f"self.ui names missing from {UI_FILE.name}: {missing}"


def test_ui_custom_widgets_declared():
    """Each Slicer or CTK widget class in the .ui file is a declared custom widget."""
    root = ElementTree.parse(UI_FILE).getroot()
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    custom = {c for c in used if c.startswith(("ctk", "qMRML", "qSlicer"))}
    assert custom <= declared, f"undeclared custom widgets: {custom - declared}"


@pytest.mark.parametrize("path", MODULE_FILES, ids=lambda p: p.name)
def test_slicer_apis_listed(path):
    """Every Slicer, Qt, CTK and VTK API the file uses is in the checked-in list."""
    entries = load_api_list()
    collector = collect_apis(path, ui_widgets())
    unlisted = sorted(
        f"{api} (line {line})"
        for api, line in collector.apis.items()
        if not listed(api, entries)
    )
    assert collector.apis, f"no API use found in {path.name}"
    assert (
        not unlisted
    ), f"APIs used in {path.name} but not in {API_LIST.name}: {unlisted}"


def test_api_list_entries_complete():
    """Each list entry names the project, defining file and releases it was read in."""
    data = json.loads(API_LIST.read_text("utf-8"))
    releases = data["releases"]
    for entry in data["apis"]:
        api = entry["api"]
        assert entry.get("project") in releases, f"{api}: unknown project"
        assert entry.get("file"), f"{api}: no defining file"
        assert entry.get("checked"), f"{api}: no release it was read in"
        for release in entry["checked"]:
            assert release in releases[entry["project"]], f"{api}: unknown {release}"


def test_api_list_rejects_unlisted_call(tmp_path):
    """The check fails for a module that calls an API missing from the list."""
    module = tmp_path / "Fake.py"
    module.write_text(
        "import slicer\n"
        "def run(thing, segmentationNode):\n"
        "    slicer.util.notAnApi()\n"
        "    thing.GetNotListed()\n"
        "    segmentationNode.GetSegmentation()\n"
        "    segmentationNode.GetNotListedEither()\n"
    )
    entries = load_api_list()
    collector = collect_apis(module, {})
    unlisted = {api for api in collector.apis if not listed(api, entries)}
    assert "slicer.util.notAnApi" in unlisted
    assert ".GetNotListed" in unlisted
    assert "slicer.vtkMRMLSegmentationNode.GetNotListedEither" in unlisted
    assert "slicer.vtkMRMLSegmentationNode.GetSegmentation" not in unlisted


def test_api_list_has_no_stale_entries():
    """Every listed API is still used, so the list stays a record of real calls."""
    widgets = ui_widgets()
    used = set()
    for path in MODULE_FILES:
        used.update(collect_apis(path, widgets).apis)
    entries = load_api_list()
    stale = sorted(
        api
        for api in entries
        if api not in used
        and not any(api.endswith(u) for u in used if u.startswith("."))
    )
    assert not stale, f"listed but unused: {stale}"


def fake_slicer_modules():
    """Build stand-in slicer, qt, ctk and vtk modules for importing the module file.

    They only let the import run, so the module's top-level code and class
    definitions can be inspected; no Slicer behaviour is simulated.
    """

    class Anything:
        def __init__(self, *args, **kwargs):
            pass

        def __getattr__(self, name):
            return Anything()

        def __call__(self, *args, **kwargs):
            return Anything()

    modules = {}
    for name in (
        "qt",
        "ctk",
        "vtk",
        "slicer",
        "slicer.util",
        "slicer.ScriptedLoadableModule",
        "DICOMLib",
    ):
        module = types.ModuleType(name)
        module.__getattr__ = lambda attribute: Anything
        modules[name] = module
    for base in (
        "ScriptedLoadableModule",
        "ScriptedLoadableModuleLogic",
        "ScriptedLoadableModuleTest",
        "ScriptedLoadableModuleWidget",
    ):
        setattr(modules["slicer.ScriptedLoadableModule"], base, type(base, (), {}))
    modules["slicer.util"].VTKObservationMixin = type("VTKObservationMixin", (), {})
    modules["DICOMLib"].DICOMPlugin = type(
        "DICOMPlugin", (), {"__init__": lambda self: None}
    )
    modules["qt"].QDialog = type("QDialog", (), {})
    return modules


def test_module_imports_with_stand_ins(monkeypatch):
    """The module file imports and defines its four classes and the scripting API."""
    for name, module in fake_slicer_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.syspath_prepend(str(MODULE_DIR))
    monkeypatch.delitem(sys.modules, "Media2DICOM", raising=False)
    import Media2DICOM

    for name in (
        "Media2DICOM",
        "Media2DICOMWidget",
        "Media2DICOMLogic",
        "Media2DICOMTest",
    ):
        assert hasattr(Media2DICOM, name), name
    logic = Media2DICOM.Media2DICOMLogic
    for method in ("exportSegments", "exportScreenshot", "exportCine", "export"):
        assert callable(getattr(logic, method)), method


def test_plugin_imports_with_stand_ins(monkeypatch):
    """The plugin file imports and registers under its module name."""
    for name, module in fake_slicer_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.syspath_prepend(str(MODULE_DIR))
    monkeypatch.delitem(sys.modules, "Media2DICOMPlugin", raising=False)
    import Media2DICOMPlugin

    parent = types.SimpleNamespace()
    sys.modules["slicer"].modules = types.SimpleNamespace()
    Media2DICOMPlugin.Media2DICOMPlugin(parent)
    assert parent.hidden is True
    registered = sys.modules["slicer"].modules.dicomPlugins
    assert registered["Media2DICOMPlugin"] is Media2DICOMPlugin.Media2DICOMPluginClass


# Build files


def cmake_commands(path: Path) -> str:
    """Return a CMake file with its comments removed."""
    return "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())


def test_extension_cmake_metadata():
    """The top-level CMakeLists.txt sets the metadata Slicer's extension build reads."""
    text = cmake_commands(REPOSITORY / "CMakeLists.txt")
    for variable in (
        "EXTENSION_HOMEPAGE",
        "EXTENSION_CATEGORY",
        "EXTENSION_CONTRIBUTORS",
        "EXTENSION_DESCRIPTION",
        "EXTENSION_ICONURL",
        "EXTENSION_SCREENSHOTURLS",
        "EXTENSION_DEPENDS",
    ):
        assert re.search(rf"set\({variable}\s+\S", text), variable
    assert "find_package(Slicer REQUIRED)" in text
    assert "include(${Slicer_USE_FILE})" in text
    assert "add_subdirectory(Media2DICOM)" in text
    assert "include(${Slicer_EXTENSION_GENERATE_CONFIG})" in text
    assert "include(${Slicer_EXTENSION_CPACK})" in text


def test_extension_cmake_installs_library_and_resources():
    """The build copies every library file and each resource that exists."""
    text = cmake_commands(REPOSITORY / "CMakeLists.txt")
    assert "Media2DICOMLib/*.py" in text
    assert "Media2DICOMLib/commands/*.py" in text
    packages = {p.parent for p in (REPOSITORY / "Media2DICOMLib").rglob("*.py")}
    assert packages == {
        REPOSITORY / "Media2DICOMLib",
        REPOSITORY / "Media2DICOMLib" / "commands",
    }, "a new library sub-package must be added to the CMake glob"
    resources = re.findall(r"^\s+(Resources/\S+)$", text, re.MULTILINE)
    assert "Resources/UI/Media2DICOM.ui" in resources
    assert "Resources/Icons/Media2DICOM.png" in resources
    for resource in resources:
        assert (REPOSITORY / resource).is_file(), resource


def test_module_cmake_lists_scripts_and_tests():
    """The module's CMakeLists.txt builds both scripts and registers the tests."""
    text = cmake_commands(MODULE_DIR / "CMakeLists.txt")
    assert "set(MODULE_NAME Media2DICOM)" in text
    assert "${MODULE_NAME}.py" in text
    assert "${MODULE_NAME}Plugin.py" in text
    assert "WITH_GENERIC_TESTS" in text
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    scripts = {p.name for p in MODULE_DIR.glob("*.py")}
    assert scripts == {"Media2DICOM.py", "Media2DICOMPlugin.py"}


def test_catalog_entry_fields():
    """The ExtensionsIndex entry has the fields of catalog schema v1.0.1 only."""
    entry = json.loads(CATALOG_ENTRY.read_text("utf-8"))
    allowed = {
        "$schema",
        "category",
        "scm_url",
        "scm_revision",
        "scm_type",
        "build_dependencies",
        "build_subdirectory",
        "enabled",
        "tier",
    }
    assert set(entry) <= allowed, set(entry) - allowed
    for required in ("$schema", "category", "scm_url"):
        assert entry.get(required), required
    assert entry["$schema"].endswith(
        "slicer-extension-catalog-entry-schema-v1.0.1.json#"
    )
    assert entry["scm_type"] in ("git", "local")
    assert 1 <= entry["tier"] <= 5
    assert isinstance(entry["enabled"], bool)
    assert entry["category"] == re.search(
        r'set\(EXTENSION_CATEGORY "([^"]+)"\)',
        (REPOSITORY / "CMakeLists.txt").read_text(),
    ).group(1)


def test_icon_is_png_of_128_pixels():
    """The module icon is a 128 x 128 PNG, the size the extension catalog shows."""
    from PIL import Image

    with Image.open(REPOSITORY / "Resources" / "Icons" / "Media2DICOM.png") as icon:
        assert icon.format == "PNG"
        assert icon.size == (128, 128)


def test_panel_screenshot_renders(tmp_path):
    """The .ui file loads in Qt offscreen with Slicer widgets shown as Qt stand-ins."""
    pytest.importorskip(
        "PySide6", reason="PySide6 is not installed (pip install PySide6-Essentials)"
    )
    from PIL import Image

    import panel_screenshot

    output = panel_screenshot.render_panel(tmp_path / "panel.png")
    with Image.open(output) as picture:
        width, height = picture.size
    assert width == 420
    assert height > 600


# Plain-Python helpers


def test_panel_imports_stay_light():
    """The helpers the panel loads at startup import no DICOM or array package."""
    import subprocess

    code = (
        "import sys, Media2DICOMLib.slicer_support, Media2DICOMLib.settings; "
        "print(sorted(m for m in ('pydicom', 'pynetdicom', 'numpy', 'PIL', 'av') "
        "if m in sys.modules))"
    )
    output = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert output.strip() == "[]"


def test_pynetdicom_matches_pydicom():
    """pydicom 2 gets pynetdicom 2 and pydicom 3 gets pynetdicom 3."""
    assert slicer_support.pynetdicom_requirement("2.4.4") == "pynetdicom>=2.0,<3"
    assert slicer_support.pynetdicom_requirement("3.0.2") == "pynetdicom>=3.0"
    with pytest.raises(Media2DICOMError, match="not a version number"):
        slicer_support.pynetdicom_requirement("unknown")


def test_requirements_follow_content():
    """Sending adds pynetdicom and video adds PyAV, while local models need nothing."""
    assert slicer_support.requirements_for(send=False, video=False) == []
    sending = slicer_support.requirements_for(
        send=True, video=False, pydicom_version="2.4.4"
    )
    assert [r.pip_requirement for r in sending] == ["pynetdicom>=2.0,<3"]
    video = slicer_support.requirements_for(send=False, video=True)
    assert [r.import_name for r in video] == ["av"]


def test_forbidden_packages_rejected():
    """VTK and SimpleITK are never offered for pip installation."""
    for name in ("vtk>=9", "SimpleITK", "itk"):
        requirement = slicer_support.Requirement(name.split(">")[0].lower(), name, "x")
        with pytest.raises(slicer_support.PackageError, match="built into 3D Slicer"):
            slicer_support.check_installable([requirement])


def test_missing_requirements_checks_versions():
    """A pynetdicom 3 beside pydicom 2 counts as missing, as do absent modules."""
    requirement = slicer_support.Requirement("pynetdicom", "pynetdicom>=2.0,<3", "send")
    present = lambda name: object()  # noqa: E731
    absent = lambda name: None  # noqa: E731

    assert slicer_support.missing_requirements(
        [requirement], present, lambda name: "3.0.4"
    ) == [requirement]
    assert (
        slicer_support.missing_requirements(
            [requirement], present, lambda name: "2.1.1"
        )
        == []
    )
    assert slicer_support.missing_requirements([requirement], absent) == [requirement]


def test_describe_missing_names_packages():
    requirement = slicer_support.Requirement("av", "av>=11", "decoding video files")
    message = slicer_support.describe_missing([requirement])
    assert "av>=11 (decoding video files)" in message
    assert "local folder" in message


def test_find_resource_source_and_built_layouts(tmp_path):
    """Resources are found beside the module (built) or one folder up (source)."""
    assert slicer_support.find_resource(MODULE_DIR, "UI/Media2DICOM.ui") == UI_FILE

    built = tmp_path / "qt-scripted-modules"
    (built / "Resources" / "UI").mkdir(parents=True)
    (built / "Resources" / "UI" / "Media2DICOM.ui").write_text("<ui/>")
    found = slicer_support.find_resource(built, "UI/Media2DICOM.ui")
    assert found == built / "Resources" / "UI" / "Media2DICOM.ui"

    with pytest.raises(FileNotFoundError, match="Icons/absent.png"):
        slicer_support.find_resource(built, "Icons/absent.png")


def test_instance_uids_attribute_split():
    assert slicer_support.instance_uids_from_attribute("1.2.3 1.2.4  1.2.5") == [
        "1.2.3",
        "1.2.4",
        "1.2.5",
    ]
    assert slicer_support.instance_uids_from_attribute(None) == []
    assert slicer_support.instance_uids_from_attribute("") == []


def test_frame_time_from_rate():
    assert slicer_support.frame_time_ms(10.0) == pytest.approx(100.0)
    assert slicer_support.frame_time_ms(24.0) == pytest.approx(41.6667, abs=1e-3)
    with pytest.raises(Media2DICOMError, match="above 0"):
        slicer_support.frame_time_ms(0)


def test_series_numbers_per_content():
    assert slicer_support.series_number_for(901, "models") == 901
    assert slicer_support.series_number_for(901, "screenshots") == 902
    assert slicer_support.series_number_for(901, "cine") == 903
    assert slicer_support.series_number_for(901, "media") == 904


def test_safe_file_stem_and_color():
    assert slicer_support.safe_file_stem("Left kidney / tumor") == "Left_kidney_tumor"
    assert slicer_support.safe_file_stem("///", "segment1") == "segment1"
    assert slicer_support.color_to_hex((1.0, 0.5, 0.0)) == "#FF8000"


def test_store_result_line_wording():
    stored = types.SimpleNamespace(
        path="/tmp/a.dcm", stored=True, message="status 0x0000"
    )
    failed = types.SimpleNamespace(path="/tmp/b.dcm", stored=False, message="refused")
    assert slicer_support.store_result_line(stored) == "Sent a.dcm: status 0x0000"
    assert slicer_support.store_result_line(failed) == "Not sent b.dcm: refused"


def test_cancellable_progress_raises_after_cancel():
    """Progress reports pass until cancel, then the next report raises Cancelled."""
    updates = []
    progress = slicer_support.CancellableProgress(updates.append)
    progress(1, 4, "first")
    assert progress.state.done == 1
    assert updates[-1].message == "first"

    progress.cancel()
    with pytest.raises(Cancelled, match="second"):
        progress(2, 4, "second")
    assert progress.cancelled


def test_background_task_result_and_error():
    """A task keeps its function's result or exception for the GUI thread."""
    ok = slicer_support.BackgroundTask(lambda x, progress: x * 2, (21,)).start()
    assert ok.wait(30)
    assert ok.finished
    assert ok.result == 42
    assert ok.error is None

    def fail(progress):
        raise Media2DICOMError("server refused")

    failing = slicer_support.BackgroundTask(fail).start()
    assert failing.wait(30)
    assert isinstance(failing.error, Media2DICOMError)


def test_background_task_cancel_reaches_worker():
    """Cancelling makes the worker's next progress report raise Cancelled."""
    started = threading.Event()
    release = threading.Event()

    def work(progress):
        progress(0, 2, "one")
        started.set()
        release.wait(30)
        progress(1, 2, "two")
        return "finished"

    task = slicer_support.BackgroundTask(work).start()
    assert started.wait(30)
    task.cancel()
    release.set()
    assert task.wait(30)
    assert isinstance(task.error, Cancelled)
    assert task.result is None


# Writing and sending an export, as the panel does after gathering the scene


def write_frames(folder: Path, count: int) -> list:
    """Write numbered PNG frames the way Screen Capture names them."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"frame_{index:05d}.png"
        Image.new("RGB", (64, 48), (index * 30, 80, 160)).save(path)
        paths.append(path)
    return paths


def write_video(path: Path, count: int = 5) -> Path:
    """Encode a short MPEG-4 video with PyAV."""
    av = pytest.importorskip("av", reason="PyAV is not installed (pip install av)")
    import numpy as np

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index in range(count):
            pixels = np.full((48, 64, 3), index * 40, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture
def ct_source(shared_data):
    from Media2DICOMLib.source_study import read_source_series

    return read_source_series(shared_data / "ct-3slice")


def test_write_export_all_content(ct_source, shared_data, tmp_path):
    """Models, a screenshot, a cine and media files land in four series of the study."""
    import pydicom

    from dicom_checks import assert_dciodvfy_clean
    from Media2DICOMLib.encapsulated_stl import ModelSpec

    video = write_video(tmp_path / "clip.mp4")
    export = slicer_support.ExportFiles(
        models=[
            ModelSpec(
                shared_data / "models" / "liver.stl",
                name="liver",
                color=(0.8, 0.5, 0.4),
                opacity=0.7,
            ),
            ModelSpec(shared_data / "models" / "spine.stl", name="spine"),
        ],
        screenshots=[shared_data / "screenshots" / "slicer-view.png"],
        cine_frames=write_frames(tmp_path / "frames", 6),
        cine_frames_per_second=10.0,
        cine_label="Cine (3D rotation)",
        media_files=[shared_data / "screenshots" / "workstation-view.jpg", video],
    )
    result = slicer_support.write_export(
        ct_source, export, tmp_path / "out", first_series_number=801
    )

    assert len(result.files) == 6
    assert len(result.descriptions) == 6
    datasets = {}
    for path in result.files:
        assert_dciodvfy_clean(path)
        dataset = pydicom.dcmread(path)
        datasets.setdefault(int(dataset.SeriesNumber), []).append(dataset)
        assert dataset.StudyInstanceUID == ct_source.study_instance_uid
        assert dataset.PatientID == ct_source.header.PatientID
    assert sorted(datasets) == [801, 802, 803, 804]

    liver, spine = datasets[801]
    assert liver.Modality == "M3D"
    assert liver.DocumentTitle == "liver"
    assert spine.DocumentTitle == "spine"
    assert liver.FrameOfReferenceUID == ct_source.frame_of_reference_uid
    assert liver.ModelGroupUID == spine.ModelGroupUID
    assert liver.RecommendedPresentationOpacity == pytest.approx(0.7)
    assert liver.SeriesDescription == "3D models"

    (screenshot,) = datasets[802]
    assert screenshot.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7.4"
    assert screenshot.Modality == "CT"
    assert screenshot.SeriesDescription == "Screenshots"
    assert "FrameOfReferenceUID" not in screenshot

    (cine,) = datasets[803]
    assert int(cine.NumberOfFrames) == 6
    assert float(cine.FrameTime) == pytest.approx(100.0)
    assert cine.SeriesDescription == "Cine"

    image, clip = sorted(datasets[804], key=lambda d: int(d.InstanceNumber))
    assert image.SeriesInstanceUID == clip.SeriesInstanceUID
    assert (int(image.InstanceNumber), int(clip.InstanceNumber)) == (1, 2)
    assert int(clip.NumberOfFrames) == 5
    assert clip.ConversionType == "DV"
    assert any("Video clip.mp4 (5 frames)" in d for d in result.descriptions)


def test_write_export_description_override(ct_source, shared_data, tmp_path):
    """A given Series Description replaces the per-content default."""
    import pydicom

    export = slicer_support.ExportFiles(
        screenshots=[shared_data / "screenshots" / "slicer-view.png"]
    )
    result = slicer_support.write_export(
        ct_source, export, tmp_path, series_description="Planning"
    )
    dataset = pydicom.dcmread(result.files[0])
    assert dataset.SeriesDescription == "Planning"
    assert int(dataset.SeriesNumber) == 902


def test_write_export_folder_of_stills(ct_source, tmp_path):
    """A folder of screenshots gives one object and one description per file."""
    from PIL import Image

    folder = tmp_path / "shots"
    folder.mkdir()
    for index, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        Image.new("RGB", (32, 24), colour).save(folder / f"view_{index + 1}.png")
    export = slicer_support.ExportFiles(screenshots=[folder])

    result = slicer_support.write_export(ct_source, export, tmp_path / "out")

    assert len(result.files) == 3
    assert len(result.descriptions) == 3
    for index, description in enumerate(result.descriptions):
        assert f"view_{index + 1}.png" in description


def test_write_export_nothing_rejected(ct_source, tmp_path):
    with pytest.raises(Media2DICOMError, match="Nothing to export"):
        slicer_support.write_export(ct_source, slicer_support.ExportFiles(), tmp_path)


def test_has_video_by_suffix():
    assert slicer_support.has_video(["a.png", "b.MP4"])
    assert not slicer_support.has_video(["a.png", "b.jpg"])


PANEL_AET = "M2DPANEL"


@pytest.fixture
def pacs(tmp_path_factory):
    """Orthanc that lists the panel's AE title, as C-GET requires."""
    import peers

    if not peers.orthanc_available():
        pytest.skip("Orthanc is not installed (Debian package orthanc)")
    server = peers.start_orthanc(
        tmp_path_factory.mktemp("orthanc"),
        modalities={"panel": [PANEL_AET, "127.0.0.1", peers.free_port()]},
        extra_config={"DicomAlwaysAllowFind": True},
    )
    yield server
    server.stop()


@pytest.fixture
def panel_settings(tmp_path, pacs):
    """A settings file with the test Orthanc, as the panel's server form saves it."""
    from Media2DICOMLib.settings import Settings, save_settings

    path = tmp_path / "settings.json"
    settings = Settings(ae_title=PANEL_AET, cache_directory=str(tmp_path / "cache"))
    save_settings(settings, path)
    name = slicer_support.save_server(
        path,
        None,
        {
            "name": "lab pacs",
            "description": "test Orthanc",
            "host": "127.0.0.1",
            "port": pacs.dicom_port,
            "called_aet": pacs.aet,
        },
    )
    assert name == "lab pacs"
    return path


def test_server_form_round_trip(panel_settings, pacs):
    """A server saved from the form reads back with the same fields and can be renamed."""
    from Media2DICOMLib.settings import load_settings

    values = slicer_support.server_values(load_settings(panel_settings), "lab pacs")
    assert values == {
        "name": "lab pacs",
        "description": "test Orthanc",
        "host": "127.0.0.1",
        "port": pacs.dicom_port,
        "called_aet": pacs.aet,
    }
    values["name"] = "archive"
    assert slicer_support.save_server(panel_settings, "lab pacs", values) == "archive"
    names = [s.name for s in load_settings(panel_settings).servers]
    assert names == ["archive"]


def test_server_form_rejects_bad_ae_title(panel_settings):
    from Media2DICOMLib.errors import SettingsError

    with pytest.raises(SettingsError):
        slicer_support.save_server(
            panel_settings,
            None,
            {
                "name": "bad",
                "description": "",
                "host": "127.0.0.1",
                "port": 104,
                "called_aet": "A" * 17,
            },
        )


def test_find_retrieve_and_send(panel_settings, pacs, shared_data, tmp_path):
    """The panel's query finds the CT, retrieves its header and sends a model back."""
    import pydicom

    from Media2DICOMLib.encapsulated_stl import ModelSpec
    from Media2DICOMLib.settings import load_settings

    for path in sorted((shared_data / "ct-3slice").glob("*.dcm")):
        pacs.upload(path)
    ct_header = pydicom.dcmread(
        shared_data / "ct-3slice" / "01.dcm", stop_before_pixels=True
    )
    settings = load_settings(panel_settings)

    rows = slicer_support.find_series(settings, "lab pacs", patient_id="99000")
    assert len(rows) == 1
    assert rows[0]["SeriesInstanceUID"] == ct_header.SeriesInstanceUID
    assert rows[0]["Modality"] == "CT"
    assert [rows[0][k] for k in slicer_support.QUERY_COLUMNS][3] == "CT"

    source = slicer_support.retrieve_series(settings, "lab pacs", rows[0], "ACC-42")
    assert source.frame_of_reference_uid == ct_header.FrameOfReferenceUID
    assert len(source.instances) == 3

    export = slicer_support.ExportFiles(
        models=[ModelSpec(shared_data / "models" / "heart.stl", name="heart")]
    )
    written = slicer_support.write_export(source, export, tmp_path / "out")
    progress = slicer_support.CancellableProgress()
    results = slicer_support.send_through_outbox(
        settings, "lab pacs", written.files, progress
    )

    assert [r.stored for r in results] == [True]
    assert progress.state.done == 1
    sent = pydicom.dcmread(written.files[0])
    assert sent.AccessionNumber == "ACC-42"
    stored = pacs.find_instances(sent.SOPInstanceUID)
    assert len(stored) == 1
    assert slicer_support.store_result_line(results[0]).startswith("Sent ")


def test_find_series_needs_a_filter(panel_settings):
    from Media2DICOMLib.settings import load_settings

    with pytest.raises(Media2DICOMError, match="Patient ID or an Accession Number"):
        slicer_support.find_series(load_settings(panel_settings), "lab pacs")


def test_send_to_stopped_server_stays_in_outbox(
    panel_settings, pacs, ct_source, shared_data, tmp_path
):
    """A send to a server that is down reports 'not sent' and keeps the object queued."""
    from Media2DICOMLib.encapsulated_stl import ModelSpec
    from Media2DICOMLib.outbox import Outbox
    from Media2DICOMLib.settings import load_settings

    export = slicer_support.ExportFiles(
        models=[ModelSpec(shared_data / "stl" / "cube-binary.stl", name="cube")]
    )
    written = slicer_support.write_export(ct_source, export, tmp_path / "out")
    pacs.stop()
    settings = load_settings(panel_settings)

    results = slicer_support.send_through_outbox(settings, "lab pacs", written.files)

    assert [r.stored for r in results] == [False]
    assert slicer_support.store_result_line(results[0]).startswith("Not sent ")
    assert len(Outbox(settings.cache_path()).entries()) == 1
