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

#: Slicer's Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json (required: $schema, category, scm_url), with
#: this project's own requirements on top (build_dependencies, scm_revision)
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
        "scm_type": {"type": "string", "enum": ["git", "local"]},
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
    # the two front doors over Slicer's scene: the bridge (scene.py) and the browser review (review/, which runs
    # Slicer's MRML and views through trame-slicer); the core and the other front doors never import Slicer
    offenders = []
    for path in LIB.rglob("*.py"):
        if path.name == "scene.py" or path.parent.name == "review":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n.split(".")[0] in ("slicer", "vtk", "qt", "ctk") for n in names):
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"only SegXAILib/scene.py and SegXAILib/review/ may import slicer/vtk/qt/ctk: {offenders}"


# ---- packaging: what an installed extension holds (finding 3) -----------------------------------------
def cmake_list(path: Path, variable: str) -> list:
    """The entries of ``set(VARIABLE ...)`` in a CMakeLists.txt (``${MODULE_NAME}`` expanded)."""
    text = path.read_text()
    module = re.search(r"set\(MODULE_NAME (\w+)\)", text)
    body = re.search(rf"set\({variable}\s*\n(.*?)\)", text, flags=re.S)
    assert body, f"no {variable} in {path}"
    entries = [line.strip() for line in body.group(1).splitlines() if line.strip() and not line.strip().startswith("#")]
    return [e.replace("${MODULE_NAME}", module.group(1)) for e in entries]


def packaged_files() -> dict:
    """source path (repo) → path inside <qt-scripted-modules> of an installed extension, from the CMake lists."""
    module, lib = ROOT / "SegXAI" / "CMakeLists.txt", LIB / "CMakeLists.txt"
    out = {}
    for entry in cmake_list(module, "MODULE_PYTHON_SCRIPTS") + cmake_list(module, "MODULE_PYTHON_RESOURCES"):
        out[ROOT / "SegXAI" / entry] = entry
    for entry in cmake_list(module, "MODULE_DATA_FILES"):  # relative to the extension's top folder
        out[ROOT / entry] = entry
    for entry in cmake_list(lib, "MODULE_PYTHON_SCRIPTS"):  # WITH_SUBDIR
        out[LIB / entry] = f"SegXAILib/{entry}"
    return out


def runtime_files() -> set:
    """Every file the module reads at run time: its script, .ui, icon, the library, the models and the sample."""
    needed = {MODULE, UI, ROOT / "SegXAI" / "Resources" / "Icons" / "SegXAI.png"}
    needed |= {p for p in LIB.rglob("*.py") if "__pycache__" not in p.parts}
    for folder in ("Models", "Samples"):
        needed |= {p for p in (ROOT / "Resources" / folder).rglob("*") if p.is_file()}
    return needed


def test_install_lists_cover_every_runtime_file():
    listed = set(packaged_files())
    missing = sorted(str(p.relative_to(ROOT)) for p in runtime_files() - listed)
    assert not missing, f"needed at run time but in no CMake install list: {missing}"
    absent = sorted(str(p.relative_to(ROOT)) for p in listed if not p.is_file())
    assert not absent, f"listed for install but not in the checkout: {absent}"
    models = [p for p in listed if p.parts[-3:-1] and p.parent.parent.name == "Models"]
    assert {p.parent.name for p in models} == {"segxai-resunet-3mm", "segxai-transunet-3mm"}


PACKAGED_CHECK = r"""
import json, os, sys
from SegXAILib.models import store
from SegXAILib import module_logic
from SegXAILib.models.card import ModelCard
from safetensors import safe_open  # reads the weights without torch (numpy arrays)
names = store.bundled_models()
default = store.default_model_name()
folder = store.resolve_model_folder(default)
card = ModelCard.load(folder / "card.json")
with safe_open(str(folder / card.weights), framework="numpy") as weights:
    tensors = len(list(weights.keys()))
print(json.dumps({"resources": str(store.resources_dir()), "models": names, "default": default,
                  "classes": card.num_classes, "tensors": tensors, "torch": "torch" in sys.modules,
                  "sample": str(module_logic.sample_ct()),
                  "ui": os.path.isfile(os.path.join(os.path.dirname(sys.argv[1]), "Resources", "UI", "SegXAI.ui"))}))
"""


def _check_packaged_layout(tree: Path) -> dict:
    import subprocess
    import sys

    env = {k: v for k, v in __import__("os").environ.items() if k != "SEGXAI_RESOURCES"}
    env.update(PYTHONPATH=str(tree), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", PACKAGED_CHECK, str(tree / "SegXAI.py")], cwd=tree, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.splitlines()[-1])
    assert Path(seen["resources"]).resolve() == (tree / "Resources").resolve()
    assert seen["models"] == ["segxai-resunet-3mm", "segxai-transunet-3mm"] and seen["default"] in seen["models"]
    assert seen["tensors"] > 10 and not seen["torch"]
    assert seen["classes"] >= 2 and Path(seen["sample"]).resolve().is_relative_to(tree.resolve()) and seen["ui"]
    return seen


def test_packaged_layout_finds_models_and_sample(tmp_path):
    """Copy only what the CMake lists name, where Slicer installs it; the models load and the sample is found."""
    import shutil

    tree = tmp_path / "qt-scripted-modules"
    for source, target in packaged_files().items():
        (tree / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, tree / target)
    _check_packaged_layout(tree)


#: Slicer's build macro reduced to where it installs files (ctkMacroCompilePythonScript keeps relative paths;
#: WITH_SUBDIR adds the source folder's name), so CMake itself runs the real CMakeLists.txt install rules
STUB_PROJECT = """
cmake_minimum_required(VERSION 3.16)
project(SegXAIInstallCheck NONE)
set(PROJECT_SOURCE_DIR "{root}")
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.8/qt-scripted-modules)
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.8/qt-scripted-modules)
macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY "WITH_GENERIC_TESTS;WITH_SUBDIR" "NAME" "SCRIPTS;RESOURCES" ${{ARGN}})
  set(_sub "")
  if(MY_WITH_SUBDIR)
    get_filename_component(_sub ${{CMAKE_CURRENT_SOURCE_DIR}} NAME)
    set(_sub "/${{_sub}}")
  endif()
  foreach(f ${{MY_SCRIPTS}} ${{MY_RESOURCES}})
    get_filename_component(d ${{f}} DIRECTORY)
    install(FILES ${{CMAKE_CURRENT_SOURCE_DIR}}/${{f}} DESTINATION ${{Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}}${{_sub}}/${{d}})
  endforeach()
endmacro()
add_subdirectory("{root}/SegXAILib" lib)
add_subdirectory("{root}/SegXAI" module)
"""


def test_cmake_install_tree_finds_models_and_sample(tmp_path):
    import shutil
    import subprocess

    cmake = shutil.which("cmake")
    if cmake is None:  # the list-based layout above still runs
        pytest.skip("cmake is not installed")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "CMakeLists.txt").write_text(STUB_PROJECT.format(root=ROOT.as_posix()))
    for args in ([cmake, "-S", "src", "-B", "build", f"-DCMAKE_INSTALL_PREFIX={tmp_path / 'inst'}"],
                 [cmake, "--install", "build"]):
        out = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout[-1500:] + out.stderr[-1500:]
    _check_packaged_layout(tmp_path / "inst" / "lib" / "Slicer-5.8" / "qt-scripted-modules")


def test_self_test_fails_instead_of_skipping_without_sample_or_models(tmp_path):
    from SegXAILib import module_logic
    from SegXAILib.errors import SegXAIError

    with pytest.raises(SegXAIError, match="no sample CT"):
        module_logic.sample_ct(tmp_path)
    tree = ast.parse(MODULE.read_text())
    test_class = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SegXAITest")
    source = ast.get_source_segment(MODULE.read_text(), test_class)
    assert "skipped" not in source and "skipTest" not in source and "module_logic.sample_ct()" in source and "bundled_models()" in source


# ---- the Extensions Index description checks (finding 11) ---------------------------------------------
#: categories the ExtensionsIndex's scripts/check_description_files.py accepts (the ones a segmentation tool uses)
INDEX_CATEGORIES = {"Segmentation", "Quantification", "Analysis", "Informatics", "Utilities"}
LICENSE_NAMES = ("LICENSE", "LICENCE", "License.txt", "license.txt", "LICENSE.txt", "COPYING", "COPYING.txt")


def raw_url_to_path(url: str, owner_repo: str) -> Path:
    """https://raw.githubusercontent.com/<owner>/<repo>/<branch>/<path> → ROOT/<path>, checking owner/repo."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    assert parts.scheme == "https" and parts.netloc == "raw.githubusercontent.com", url
    owner, repo, _branch, *path = parts.path.strip("/").split("/")
    assert f"{owner}/{repo}".lower() == owner_repo.lower(), f"{url} is not in {owner_repo}"
    return ROOT.joinpath(*path)


def test_catalog_entry_passes_extensions_index_checks():
    """What ExtensionsIndex's check_description_files.py checks, against this checkout instead of a clone."""
    from urllib.parse import urlsplit

    entry = json.loads((ROOT / "SegXAI.json").read_text())
    extension_name = "SegXAI"  # the description file's name
    assert entry["category"] in INDEX_CATEGORIES
    scm = urlsplit(entry["scm_url"])
    assert scm.scheme in ("git", "https") and "://" in entry["scm_url"]
    repo_name = Path(scm.path).stem
    assert "slicer" in repo_name.lower(), "the repository name must contain 'Slicer' (e.g. SlicerSegXAI)"
    top = (ROOT / "CMakeLists.txt").read_text()
    project = re.findall(r"project\s*\(\s*([^\s\)]+)", top, flags=re.I)
    assert project and project[0].strip("\"'") == extension_name
    owner_repo = scm.path.strip("/").removesuffix(".git")
    homepage = re.search(r'set\(EXTENSION_HOMEPAGE "([^"]+)"\)', top).group(1)
    assert urlsplit(homepage).path.strip("/").lower() == owner_repo.lower()
    icon = re.findall(r'set\s*\(EXTENSION_ICONURL\s*"([^"]+)"[ ]*\)', top, flags=re.I)
    shots = re.findall(r'set\s*\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)', top, flags=re.I)
    assert icon and shots and shots[0].split()
    for url in icon + shots[0].split():
        path = raw_url_to_path(url, owner_repo)
        assert path.is_file(), f"{url} points to {path.relative_to(ROOT)}, which is not in the repository"
        assert path.suffix.lower() in (".png", ".jpg", ".jpeg", ".gif") and path.read_bytes()[:4] in (b"\x89PNG", b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xe1", b"GIF8")
        tracked = __import__("subprocess").run(["git", "ls-files", "--error-unmatch", str(path.relative_to(ROOT))], cwd=ROOT,
                                                capture_output=True)
        assert tracked.returncode == 0, f"{path.relative_to(ROOT)} is not committed, so the raw URL would be 404"


def test_license_at_root_is_apache_2():
    found = [name for name in LICENSE_NAMES if (ROOT / name).is_file()]
    assert found, "no licence file in the repository root"
    text = (ROOT / found[0]).read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text and "END OF TERMS AND CONDITIONS" in text
    import hashlib

    # the canonical https://www.apache.org/licenses/LICENSE-2.0.txt, byte for byte
    assert hashlib.md5((ROOT / found[0]).read_bytes()).hexdigest() == "3b83ef96387f14655fc854ddc3c6bd57"
