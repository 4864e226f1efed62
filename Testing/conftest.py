"""Shared fixtures: paths to the team's real CT data, synthetic volumes with awkward geometry, tiny models."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data"


def pytest_configure(config):
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI (CI=true, as .ci/run runs) an oracle that cannot be imported fails its test instead of skipping it:
    a developer machine without captum, zennit, pytorch-grad-cam or quantus may skip, CI must not."""
    import os

    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI", "").lower() in ("1", "true", "yes") and call.excinfo is not None:
        reason = str(call.excinfo.value)
        if "could not import" in reason:
            report.outcome = "failed"
            report.longrepr = f"CI must run this test's oracle: {reason} (install it from .ci/run)"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"the shared data folder {DATA} is not beside the checkout")
    return DATA


def rotation(axis: str, degrees: float) -> np.ndarray:
    t = np.radians(degrees)
    c, s = np.cos(t), np.sin(t)
    return {
        "x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
        "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
        "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]),
    }[axis]


def make_sitk(array: np.ndarray, spacing, direction: np.ndarray, origin):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection(np.asarray(direction, dtype=float).flatten().tolist())
    image.SetOrigin([float(o) for o in origin])
    return image


@pytest.fixture
def awkward_geometries():
    """SimpleITK geometries the IO and pre-processing must survive: (name, spacing, direction, origin)."""
    oblique = rotation("z", 17) @ rotation("x", -11) @ rotation("y", 6)
    return [
        ("axial LPS", (0.8, 0.8, 2.5), np.eye(3), (-120.5, -95.25, 30.0)),
        ("RAS-stored", (1.5, 1.5, 3.0), np.diag([-1.0, -1.0, 1.0]), (178.0, -11.25, 94.5)),
        ("oblique anisotropic", (0.7, 1.1, 2.0), oblique, (12.5, -40.75, 101.0)),
        ("flipped permuted", (2.0, 1.0, 1.5), np.array([[0, 0, -1.0], [1.0, 0, 0], [0, -1.0, 0]]), (50.0, 60.0, -70.0)),
    ]


@pytest.fixture
def ct_like():
    """A small synthetic 'CT': air around a soft-tissue body with a bright blob (int16 HU), shape (K, J, I)."""
    rng = np.random.default_rng(0)
    k, j, i = np.mgrid[0:20, 0:24, 0:28]
    body = ((j - 12) / 10.0) ** 2 + ((i - 14) / 12.0) ** 2 < 1
    blob = (k - 10) ** 2 + (j - 10) ** 2 + (i - 16) ** 2 < 16
    hu = np.full(k.shape, -1000, dtype=np.int16)
    hu[body] = 40
    hu[blob] = 150
    hu = hu + rng.integers(-5, 6, size=hu.shape).astype(np.int16)
    return hu
