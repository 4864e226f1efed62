"""Checks of the Slicer module and packaging that need no Slicer: .ui ↔ code ↔ parameter node, CMake lists,
the ExtensionsIndex catalog entry, the icon, and Python 3.9 grammar everywhere."""
from __future__ import annotations

import ast
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "SegXAI" / "SegXAI.py"
UI = ROOT / "SegXAI" / "Resources" / "UI" / "SegXAI.ui"
LIB = ROOT / "SegXAILib"

#: required keys and types of slicer-extension-catalog-entry-schema v1.0.x
CATALOG_SCHEMA = {
    "type": "object",
    "required": ["$schema", "build_dependencies", "category", "scm_revision", "scm_url"],
    "properties": {
        "$schema": {"type": "string", "pattern": r"slicer-extension-catalog-entry-schema-v1\.0\.\d+\.json"},
        "build_dependencies": {"type": "array", "items": {"type": "string"}},
        "build_subdirectory": {"type": "string"},
        "category": {"type": "string", "minLength": 1},
        "enabled": {"type": "boolean"},
        "scm_revision": {"type": "string", "minLength": 1},
        "scm_url": {"type": "string", "pattern": r"^(https|git)://"},
        "tier": {"type": "integer", "enum": [1, 3, 5]},
    },
    "additionalProperties": False,
}


def ui_widgets() -> dict:
    """name → class of every widget (and layout/spacer) in the .ui, plus SlicerParameterName values."""
    tree = ET.parse(UI)
    return {w.get("name"): w.get("class") for w in tree.iter() if w.tag in ("widget", "layout", "spacer") and w.get("name")}


def parameter_fields() -> set:
    """Fields of the @parameterNodeWrapper class in the module (annotated class attributes)."""
    tree = ast.parse(MODULE.read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list):
            return {s.target.id for s in node.body if isinstance(s, ast.AnnAssign)}
    raise AssertionError("no @parameterNodeWrapper class in SegXAI.py")


def test_ui_parses_and_every_ui_name_used_exists():
    widgets = ui_widgets()
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE.read_text()))
    assert used, "the module uses no self.ui widgets?"
    missing = sorted(used - set(widgets))
    assert not missing, f"SegXAI.py uses widgets missing from SegXAI.ui: {missing}"


def test_parameter_names_match_parameter_node():
    tree = ET.parse(UI)
    names = [p.find("string").text for p in tree.iter("property") if p.get("name") == "SlicerParameterName"]
    assert names
    fields = parameter_fields()
    unknown = sorted(set(names) - fields)
    assert not unknown, f"SlicerParameterName values with no parameter-node field: {unknown}"
    assert len(names) == len(set(names)), "a parameter is bound to two widgets"


def test_every_library_file_is_listed_in_cmake():
    text = (LIB / "CMakeLists.txt").read_text()
    assert "WITH_SUBDIR" in text and "slicerMacroBuildScriptedModule" in text
    listed = set(re.findall(r"^\s+([\w/]+\.py)\s*$", text, flags=re.M))
    present = {p.relative_to(LIB).as_posix() for p in LIB.rglob("*.py") if "__pycache__" not in p.parts}
    assert not sorted(present - listed), f"not listed in SegXAILib/CMakeLists.txt: {sorted(present - listed)}"
    assert not sorted(listed - present), f"listed but missing: {sorted(listed - present)}"


def test_module_cmake_and_top_level_cmake():
    module = (ROOT / "SegXAI" / "CMakeLists.txt").read_text()
    for item in ("${MODULE_NAME}.py", "Resources/Icons/${MODULE_NAME}.png", "Resources/UI/${MODULE_NAME}.ui", "slicer_add_python_unittest"):
        assert item in module
    top = (ROOT / "CMakeLists.txt").read_text()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert re.search(rf'set\({key} "[^"]+"\)', top), key
    assert re.search(r'set\(EXTENSION_DEPENDS "?PyTorch"?\)', top)
    assert "add_subdirectory(SegXAILib)" in top and "add_subdirectory(SegXAI)" in top


def test_catalog_entry_validates():
    entry = json.loads((ROOT / "SegXAI.json").read_text())
    assert entry["build_dependencies"] == ["PyTorch"]
    try:
        import jsonschema
    except ImportError:  # the required keys and types, checked by hand
        assert set(CATALOG_SCHEMA["required"]) <= set(entry) and set(entry) <= set(CATALOG_SCHEMA["properties"])
        return
    jsonschema.validate(entry, CATALOG_SCHEMA)


def test_icon_is_128_png():
    for path in (ROOT / "SegXAI" / "Resources" / "Icons" / "SegXAI.png", ROOT / "SegXAI.png"):
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert (width, height) == (128, 128), path


@pytest.mark.parametrize("path", [MODULE] + sorted(LIB.rglob("*.py")), ids=lambda p: str(Path(p).relative_to(ROOT)))
def test_python39_grammar(path):
    ast.parse(Path(path).read_text(), filename=str(path), feature_version=(3, 9))


def test_only_scene_imports_slicer():
    offenders = []
    for path in LIB.rglob("*.py"):
        if path.name == "scene.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n.split(".")[0] in ("slicer", "vtk", "qt", "ctk") for n in names):
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"only SegXAILib/scene.py may import slicer/vtk/qt/ctk: {offenders}"
