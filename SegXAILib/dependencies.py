"""What SegXAI needs in Slicer's Python besides what Slicer ships, and the commands that install it.

PyTorch comes the way Slicer's PyTorch extension installs it (``light-the-torch``, which picks the build for the
GPU driver); the other packages come from pip with their dependencies resolved, under a constraints file that
pins the installed torch, numpy and SimpleITK, so an install can never replace Slicer's numpy/SimpleITK or the
user's torch build. The commands run as a background process (:class:`SegXAILib.process_tree.BackgroundJob`),
so the panel stays responsive during a download.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Callable, Optional

#: import name → pip requirement, for what the background run imports (numpy and SimpleITK ship with Slicer)
REQUIREMENTS = {
    "monai": "monai>=1.3",
    "einops": "einops",
    "scipy": "scipy",
    "safetensors": "safetensors",
    "slicerio": "slicerio>=1.1",
    "nrrd": "pynrrd",
    "tqdm": "tqdm",
}
#: the oldest torch SegXAILib is tested with (pyproject: torch>=2.1)
MINIMUM_TORCH = "2.1"
#: distributions an install must never replace (pinned at their installed version)
PROTECTED = ("torch", "numpy", "SimpleITK")


def version_tuple(text: str) -> tuple:
    """(major, minor, patch) from a version string such as '2.13.0+cpu' or '2.1'."""
    numbers = [int(n) for n in re.findall(r"\d+", str(text).split("+")[0])[:3]]
    return tuple(numbers + [0] * (3 - len(numbers)))


def torch_is_recent(version: Optional[str], minimum: str = MINIMUM_TORCH) -> bool:
    """True when ``version`` (None: not installed) is at least ``minimum``."""
    return version is not None and version_tuple(version) >= version_tuple(minimum)


def installed_version(distribution: str) -> Optional[str]:
    """The installed version of a distribution (from its metadata; torch is never imported for this); None when
    absent. numpy and SimpleITK built into Slicer may lack pip metadata: their ``__version__`` is read instead,
    so they are still pinned."""
    import importlib.metadata

    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        pass
    if distribution in ("numpy", "SimpleITK"):
        try:
            return str(importlib.import_module(distribution).__version__)
        except (ImportError, AttributeError):
            return None
    return None


def missing_requirements(find_spec: Callable = importlib.util.find_spec) -> list:
    """pip requirements of the packages that cannot be imported now."""
    return [pip for module, pip in REQUIREMENTS.items() if find_spec(module) is None]


def constraints_text(versions: dict) -> str:
    """A pip constraints file pinning each installed protected distribution ({name: version or None})."""
    return "".join(f"{name}=={version}\n" for name, version in versions.items() if version)


def install_commands(python: str, missing: list, torch_version: Optional[str], constraints: Optional[Path]) -> list:
    """The argv lists that bring Slicer's Python up to what SegXAI needs (empty when nothing is missing)."""
    commands = []
    if not torch_is_recent(torch_version):
        commands.append([python, "-m", "pip", "install", "--upgrade", "light-the-torch>=0.5"])
        commands.append([python, "-m", "light_the_torch", "install", f"torch>={MINIMUM_TORCH}"])
    if missing:
        command = [python, "-m", "pip", "install", "--upgrade-strategy", "only-if-needed"]
        if constraints is not None:
            command += ["--constraint", str(constraints)]
        commands.append(command + list(missing))
    return commands


def plan(python: str, folder: Path, find_spec: Callable = importlib.util.find_spec,
         version_of: Callable = installed_version) -> tuple:
    """(commands, message): what to run and one sentence for the confirmation dialog; writes the constraints file.

    The constraints pin torch only when it is recent enough (else light-the-torch installs it first and the
    package step is planned against the new one by pip itself, which sees torch already satisfied).
    """
    importlib.invalidate_caches()  # packages a background pip just installed must be seen by find_spec
    # importable, not only installed: a half-removed torch (metadata left behind) must be reinstalled too
    torch_version = version_of("torch") if find_spec("torch") is not None else None
    missing = missing_requirements(find_spec)
    pins = {name: version_of(name) for name in PROTECTED}
    if not torch_is_recent(torch_version):
        pins.pop("torch")
    constraints = None
    if missing:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        constraints = folder / "constraints.txt"
        constraints.write_text(constraints_text(pins))
    commands = install_commands(python, missing, torch_version, constraints)
    parts = []
    if not torch_is_recent(torch_version):
        parts.append(f"PyTorch {MINIMUM_TORCH} or newer (about 1–3 GB" +
                     (f"; {torch_version} is installed" if torch_version else "") + ")")
    if missing:
        parts.append("the Python packages " + ", ".join(missing))
    message = ("SegXAI needs " + " and ".join(parts) + ". Install now? This runs in the background and may take "
               "several minutes; numpy and SimpleITK are kept as they are.") if parts else ""
    return commands, message
