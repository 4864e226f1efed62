"""``segxai review``: the results folder in a real headless Chromium, drawn by Slicer's views (trame-slicer).

Oracles from outside the code under test: the report JSON written beside the maps (scores shown must equal
it), the rendered page's pixels (the map's colours inside the liver box, the CT's grey elsewhere, a method switch
changing the overlay), the HTTP answers of the running server (traversal and token), and the folder's bytes
before and after a session (read-only). The browser test skips without Chromium unless SEGXAI_REQUIRE_BROWSER=1.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from SegXAILib.errors import SegXAIError
from SegXAILib.models.card import ClassInfo

ROOT = Path(__file__).resolve().parents[1]
CLASSES = [ClassInfo(0, "background"), ClassInfo.known(1, "liver"), ClassInfo.known(2, "spleen")]
from helpers import RINGED_LIVER as LIVER, RINGED_SPLEEN as SPLEEN  # noqa: E402
HOT = (slice(None), slice(22, 38), slice(18, 34))  # large map values, inside the liver


REFERENCE_SHIFT = 3  # the reference liver: the labelled liver moved 3 voxels in j (towards anterior)
DIM = (slice(None), slice(22, 38), slice(18, 26))  # the first half (in i) of the hot box holds half the top value


def write_case(folder: Path, stem: str = "case", hot=HOT, score_shift: float = 0.0, dim=DIM) -> dict:
    """A results folder as ``segxai explain`` lays it out: CT, labels + .seg.nrrd, a Grad-CAM and an IG map, a
    reference liver, the report (with deletion/insertion curves for both methods and both controls)."""
    from SegXAILib.outputs import write_segmentation_outputs
    from SegXAILib.volume import write_json_atomic, write_volume

    from helpers import ringed_ct

    ct, labels, rng = ringed_ct()
    grad = np.full(ct.shape, 0.02, np.float32)  # faint everywhere: must not show
    grad[hot] = 1.0
    if dim is not None:
        grad[dim] = 0.5  # shown at the default threshold, hidden at the highest
    ig = rng.normal(0, 0.01, ct.shape).astype(np.float32)
    ig[hot] = -1.0  # IG's negative (blue) where Grad-CAM is hot (yellow): a switch must change the colour there
    folder.mkdir(parents=True, exist_ok=True)
    write_volume(ct, folder / f"{stem}.nii.gz")
    write_segmentation_outputs(ct.like(labels), CLASSES, folder, stem)
    write_volume(ct.like(grad), folder / f"{stem}_gradcam_liver.nrrd")
    write_volume(ct.like(ig), folder / f"{stem}_ig_liver.nrrd")
    reference = np.roll(labels == 1, REFERENCE_SHIFT, axis=1).astype(np.uint8)
    write_volume(ct.like(reference), folder / f"{stem}_reference_liver.nii.gz")
    fractions = [i / 10 for i in range(11)]
    curves = {"gradcam": ([1 - f ** 0.3 for f in fractions], [f ** 0.3 for f in fractions]),
              "ig": ([1 - f for f in fractions], [f for f in fractions]),
              "random": ([1 - f ** 2 for f in fractions], [f ** 2 for f in fractions]),
              "edge": ([1 - f ** 1.5 for f in fractions], [f ** 1.5 for f in fractions])}

    def with_curves(name, scores):
        deletion, insertion = curves[name]
        return dict(scores, curve_fractions=fractions, deletion_curve=deletion, insertion_curve=insertion)

    quality = {"gradcam": {"energy_inside": 0.8125 - score_shift, "pointing_game": True, "deletion_auc": 0.3141 + score_shift,
                           "insertion_auc": 0.7071 - score_shift},
               "ig": {"energy_inside": 0.4375, "pointing_game": False, "deletion_auc": 0.5432, "insertion_auc": 0.2468}}
    report = {"model": "segxai-test-model", "layer": "model.2",
              "target": {"class": "liver", "value": 1, "region": "the predicted liver", "region_voxels": int(labels.sum())},
              "device": "cpu", "methods": {m: {"params": {}, "seconds": 1.0, "checks": {}, "quality": with_curves(m, q),
                                               "warnings": []} for m, q in quality.items()},
              "controls": {n: with_curves(n, {"deletion_auc": 0.5, "insertion_auc": 0.3}) for n in ("random", "edge")},
              "reference": str(folder / f"{stem}_reference_liver.nii.gz")}
    report["methods"]["ig"]["checks"] = {"completeness_error": 0.0123}
    write_json_atomic(report, folder / f"{stem}_explain.json")
    return report


# ---- the folder reader (no web extra needed) ----------------------------------------------------------------
def test_folder_reads_cases_and_refuses_paths_outside(tmp_path):
    from SegXAILib.review.folder import find_cases, inside

    report = write_case(tmp_path / "out")
    (cases,) = find_cases(tmp_path / "out")
    assert cases.stem == "case" and set(cases.maps) == set(report["methods"])
    assert cases.ct == (tmp_path / "out" / "case.nii.gz").resolve()
    assert cases.describe()["Target"] == "liver" and cases.describe()["Model"] == "segxai-test-model"
    with pytest.raises(SegXAIError, match="outside the results folder"):
        inside(tmp_path / "out", "../secret.txt")
    with pytest.raises(SegXAIError, match="outside the results folder"):
        inside(tmp_path / "out", "/etc/passwd")
    (tmp_path / "secret.nrrd").write_text("x")
    (tmp_path / "out" / "link.nrrd").symlink_to(tmp_path / "secret.nrrd")
    with pytest.raises(SegXAIError, match="outside the results folder"):
        inside(tmp_path / "out", "link.nrrd")
    # a report whose target class names a path out of the folder cannot make the reader open it
    bad = dict(report, target=dict(report["target"], **{"class": "../../secret"}))
    (tmp_path / "out" / "evil_explain.json").write_text(json.dumps(bad))
    with pytest.raises(SegXAIError, match="outside the results folder"):
        find_cases(tmp_path / "out")


def test_a_batch_folder_lists_a_case_per_sub_folder(tmp_path):
    """segxai batch writes OUT/<case>/ as segxai explain does: every sub-folder's case is listed under
    <sub-folder>/<stem> (same stems apart), an unfinished hidden staging folder is not, a sub-folder symlinked
    from outside is refused, and segxai review takes the folder for results, not for a CT to compute."""
    from SegXAILib.cli_review import is_results_folder
    from SegXAILib.review.folder import find_cases

    out = tmp_path / "out"
    write_case(out / "patient-1", "ct")
    write_case(out / "patient-2", "ct", score_shift=0.25)
    write_case(out / ".partial-patient-3-x1", "ct")
    (out / "manifest").mkdir()
    (out / "manifest" / "patient-1.json").write_text("{}")
    cases = find_cases(out)
    assert [c.key for c in cases] == ["patient-1/ct", "patient-2/ct"]
    assert cases[1].report["methods"]["gradcam"]["quality"]["energy_inside"] == pytest.approx(0.8125 - 0.25)
    assert cases[0].maps["gradcam"] == (out / "patient-1" / "ct_gradcam_liver.nrrd").resolve()
    assert is_results_folder(out)
    write_case(tmp_path / "elsewhere", "ct")
    (out / "patient-4").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(SegXAIError, match="outside the results folder"):
        find_cases(out)


def test_a_bad_or_missing_reference_leaves_the_case_with_a_note(tmp_path):
    """The reference is extra: a file that is no image, one without the class, or a recorded one that is gone gives
    a note saying why nothing is compared, never an error that hides the case."""
    from SegXAILib.review.folder import find_cases
    from SegXAILib.review.session import case_reference
    from SegXAILib.volume import read_volume, write_volume

    (case,) = find_cases(write_case(tmp_path / "out") and tmp_path / "out")
    reference, note = case_reference(case)
    assert reference is not None and "label value 1" in note
    (tmp_path / "notes.nii.gz").write_text("not an image")
    reference, note = case_reference(case, str(tmp_path / "notes.nii.gz"))
    assert reference is None and "is not compared" in note and "notes.nii.gz" in note
    empty = read_volume(tmp_path / "out" / "case.nii.gz")
    write_volume(empty.like(np.zeros(empty.shape, np.uint8)), tmp_path / "empty.nii.gz")
    reference, note = case_reference(case, str(tmp_path / "empty.nii.gz"))
    assert reference is None and "empty" in note
    (tmp_path / "out" / "case_reference_liver.nii.gz").unlink()
    reference, note = case_reference(case)
    assert reference is None and "missing" in note


def test_folder_without_reports_is_one_clear_error(tmp_path):
    from SegXAILib.review.folder import find_cases

    with pytest.raises(SegXAIError, match="no \\*_explain.json"):
        find_cases(tmp_path)
    with pytest.raises(SegXAIError, match="not a folder"):
        find_cases(tmp_path / "missing")


def test_non_loopback_host_gets_a_token():
    from SegXAILib.review.server import choose_token, is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and not is_loopback("0.0.0.0")
    assert choose_token("127.0.0.1", None) is None
    assert len(choose_token("0.0.0.0", None)) >= 16
    with pytest.raises(SegXAIError, match="at least 16"):
        choose_token("0.0.0.0", "short")


def test_without_the_web_extra_one_line_says_what_to_install(tmp_path):
    """trame_slicer made unimportable (None in sys.modules): the command prints the install line, no traceback."""
    code = ("import sys; sys.modules['trame_slicer'] = None; from SegXAILib.cli import main; "
            f"sys.exit(main(['review', {str(tmp_path)!r}]))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and 'pip install -e ".[web]"' in lines[0] and "Traceback" not in done.stderr


# ---- the running server --------------------------------------------------------------------------------------
def require_web():
    pytest.importorskip("slicer")
    try:
        import trame_slicer.rca_view  # noqa: F401
    except ImportError as error:
        pytest.skip(f"no web extra here ({error})")


class Served:
    """``segxai review`` in a child process; ``url`` is what it printed."""

    def __init__(self, folder, *extra):
        env = dict(os.environ, OMP_NUM_THREADS="1", VTK_DEFAULT_OPENGL_WINDOW=os.environ.get("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow"))
        launched = time.perf_counter()
        self.process = subprocess.Popen([sys.executable, "-m", "SegXAILib.cli", "review", str(folder), *extra],
                                        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines = []
        self.url = None
        for line in self.process.stdout:
            self.lines.append(line)
            found = re.search(r"open (http://\S+)", line)
            if found:
                self.url = found.group(1)
                break
        if self.url is None:
            self.process.wait()
            raise AssertionError("segxai review printed no URL:\n" + "".join(self.lines))
        self.started = time.perf_counter()
        self.startup_s = self.started - launched

    def base(self) -> str:
        return self.url.split("?")[0]

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def http_status(url: str) -> tuple:
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, b""


def test_server_refuses_traversal_and_never_writes_into_the_folder(tmp_path):
    """Raw HTTP (no browser): '..' paths get no file outside the web assets; the folder's bytes stay the same."""
    require_web()
    from SegXAILib.review.folder import folder_digest

    out = tmp_path / "out"
    write_case(out)
    (tmp_path / "secret.txt").write_text("SECRET-OUTSIDE")
    before = folder_digest(out)
    served = Served(out)
    try:
        assert served.url.startswith("http://127.0.0.1:")
        status, body = http_status(served.base())
        assert status == 200 and b"<html" in body.lower()
        for path in ("../secret.txt", "%2e%2e/secret.txt", "..%2fsecret.txt", "case_explain.json", "../out/case_explain.json",
                     "%2e%2e/%2e%2e" + str(tmp_path / "secret.txt")):
            status, body = http_status(served.base() + path)
            assert b"SECRET-OUTSIDE" not in body and b"segxai-test-model" not in body, path
    finally:
        served.stop()
    assert folder_digest(out) == before


def test_token_is_required_on_another_interface(tmp_path):
    require_web()
    out = tmp_path / "out"
    write_case(out)
    served = Served(out, "--host", "0.0.0.0", "--token", "a-token-of-24-characters")
    try:
        assert served.url.endswith("?token=a-token-of-24-characters")
        port = served.base().rstrip("/").rsplit(":", 1)[1]
        status, _ = http_status(f"http://127.0.0.1:{port}")
        assert status == 403
        status, _ = http_status(f"http://127.0.0.1:{port}/?token=a-wrong-token-of-24-chars")
        assert status == 403
        status, body = http_status(f"http://127.0.0.1:{port}/?token=a-token-of-24-characters")
        assert status == 200 and b"<html" in body.lower()
    finally:
        served.stop()


# ---- the page in a real headless Chromium ----------------------------------------------------------------------
def browser_or_skip():
    """A headless Chromium driven by selenium (Debian's chromium + chromium-driver, no download); skipped when
    missing, a failure instead when SEGXAI_REQUIRE_BROWSER=1 (CI)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as error:
        missing = f"selenium ({error})"
    else:
        missing = "" if chromium and driver_path else "chromium / chromedriver (apt-get install chromium chromium-driver)"
    if missing:
        message = f"no browser for the review page tests: {missing}"
        if os.environ.get("SEGXAI_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
                     "--force-device-scale-factor=1"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(driver_path), options=options)


def element_pixels(element) -> np.ndarray:
    """(H, W, 3) uint8 of what the browser shows inside ``element``."""
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(element.screenshot_as_png)).convert("RGB"))


def wait_for(condition, tries: int = 600, pause: float = 0.1):
    """Poll ``condition`` until it returns something truthy (a bounded loop, not a time limit on the code)."""
    for _ in range(tries):
        value = condition()
        if isinstance(value, np.ndarray) or value:  # a picture, or anything truthy
            return value
        time.sleep(pause)
    raise AssertionError("the page never reached the expected state")


def ct_square(pixels: np.ndarray) -> tuple:
    """(top, bottom, left, right) of the CT's picture in a slice view: rows/columns mostly non-black (the
    legend's sparse text and narrow bar do not make a column mostly non-black)."""
    lit = pixels.max(axis=2) > 20

    def longest_run(flags):  # the view's 1-pixel border is a lit column too: keep the widest block
        edges = np.flatnonzero(np.diff(np.concatenate([[0], flags.astype(int), [0]])))
        starts, ends = edges[::2], edges[1::2]
        best = np.argmax(ends - starts)
        return starts[best], ends[best]

    top, bottom = longest_run(lit.mean(axis=1) > 0.5)
    left, right = longest_run(lit.mean(axis=0) > 0.5)
    return top, bottom, left, right


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    require_web()
    from SegXAILib.review.folder import folder_digest

    out = tmp_path_factory.mktemp("review") / "out"
    report = write_case(out)
    other = write_case(out, "other", hot=(slice(None), slice(50, 66), slice(46, 66)), score_shift=0.25, dim=None)  # in the spleen
    before = folder_digest(out)
    driver = browser_or_skip()
    served = Served(out)
    figures = {"command_to_url_s": served.startup_s}
    try:
        start = time.perf_counter()
        driver.get(served.url)

        def axial():
            return axial_picture(driver)

        first = wait_for(axial)
        figures["first_picture_s"] = time.perf_counter() - start

        def settled():  # the views get their browser size after the first picture: wait for the refitted one
            nonlocal first
            time.sleep(0.5)
            now = axial()
            same = now is not None and now.shape == first.shape and np.abs(now.astype(int) - first).max() <= 8
            first = now if now is not None else first
            return same

        wait_for(settled, tries=120)
        yield {"driver": driver, "axial": axial, "first": first, "report": report, "other": other, "figures": figures,
               "out": out, "before": before, "served": served}
    finally:
        driver.quit()
        served.stop()
        print(f"\nreview page figures: {figures}")


def save_artefacts(**pictures) -> None:
    """Write the pictures as PNGs into $SEGXAI_RENDER_ARTEFACTS when it is set (CI keeps them)."""
    chosen = os.environ.get("SEGXAI_RENDER_ARTEFACTS")
    if not chosen:
        return
    from PIL import Image

    Path(chosen).mkdir(parents=True, exist_ok=True)
    for name, pixels in pictures.items():
        Image.fromarray(pixels).save(Path(chosen) / f"review_{name}.png")


def set_slider(driver, element_id: str, key: str) -> None:
    """Move a Vuetify slider to its minimum (Keys.HOME) or maximum (Keys.END) as a keyboard user would."""
    thumb = driver.find_element("css selector", f"#{element_id} [role=slider], [id={element_id}] ~ * [role=slider]") \
        if driver.find_elements("css selector", f"#{element_id} [role=slider]") else \
        driver.find_element("xpath", f"//input[@id='{element_id}']/ancestor::div[contains(@class,'v-slider')]//*[@role='slider']")
    thumb.send_keys(key)


def axial_picture(driver):
    """The axial view's picture once it shows something (a fifth of it lit), else None; the layout 'Quad View' is
    coronal, sagittal | 3D, axial, so the axial view's picture is the 4th."""
    images = driver.find_elements("css selector", "#views img")
    if len(images) < 4 or min(images[3].size.values()) < 8:
        return None
    pixels = element_pixels(images[3])
    return pixels if pixels.size and (pixels.max(axis=2) > 20).mean() > 0.2 else None


def changed_from(axial, before: np.ndarray):
    """A condition for wait_for: the picture ``axial()`` gives once it differs from ``before`` (else None)."""
    def check():
        now = axial()
        if now is None or (now.shape == before.shape and np.abs(now.astype(int) - before).max() <= 8):
            return None
        return now
    return check


def numbers(scores: dict) -> dict:
    """The scores a table shows: the numbers (the curves' lists are plotted, not listed)."""
    return {k: v for k, v in scores.items() if isinstance(v, (int, float))}


def scores_shown(driver) -> dict:
    rows = driver.find_elements("css selector", "#scores .score-row")
    return {r.find_element("css selector", ".score-name").text: r.find_element("css selector", ".score-value").text
            for r in rows}


def test_page_shows_the_map_in_the_liver_the_ct_elsewhere_and_the_report_scores(page):
    """Opacity 0 draws the CT alone (the oracle picture); at full opacity only the hot box, inside the liver,
    changes: where the file's affine and the radiological convention put it (patient right on screen left)."""
    from selenium.webdriver.common.keys import Keys

    from SegXAILib.score_labels import plain_name

    driver = page["driver"]
    shown = wait_for(lambda: scores_shown(driver) or None)
    expected = page["report"]["methods"]["gradcam"]["quality"]
    assert "Deletion AUC" in shown and "Insertion AUC" in shown
    for key, value in numbers(expected).items():
        assert float(shown[plain_name(key)]) == pytest.approx(float(value), rel=5e-3), key
    assert "liver" in driver.find_element("id", "about").text and "segxai-test-model" in driver.find_element("id", "about").text

    current = page["axial"]()
    set_slider(driver, "opacity", Keys.HOME)
    ct_alone = wait_for(changed_from(page["axial"], current))
    set_slider(driver, "opacity", Keys.END)
    full = wait_for(changed_from(page["axial"], ct_alone))
    top, bottom, left, right = ct_square(ct_alone)
    differs = np.abs(full.astype(int) - ct_alone).max(axis=2) > 30
    save_artefacts(ct_alone=ct_alone, gradcam_full=full, differs=(differs[..., None] * np.array([255, 255, 255])).astype(np.uint8))
    inside_ct = np.zeros_like(differs)
    inside_ct[top:bottom, left:right] = True
    assert differs[inside_ct].mean() > 0.02, "the map does not show"
    # where it shows: i 18..34 of 80 from screen right, j 22..38 of 80 from the bottom (A up)
    rows, cols = np.nonzero(differs & inside_ct)
    height, width = bottom - top, right - left
    assert height == pytest.approx(width, abs=3), "the CT (120 x 120 mm, square pixels) is not drawn whole"
    box = ((rows.min() - top) / height, (rows.max() + 1 - top) / height, (cols.min() - left) / width, (cols.max() + 1 - left) / width)
    assert box == pytest.approx((1 - 38 / 80, 1 - 22 / 80, 1 - 34 / 80, 1 - 18 / 80), abs=0.04)
    # the CT is unveiled elsewhere (the faint 0.02 everywhere is below the threshold); the map is interpolated,
    # so its edge spreads over about one voxel: the box is widened by a voxel's pixels
    margin = int(np.ceil(width / 80)) + 2
    outside = inside_ct.copy()
    r0, r1 = top + int((1 - 38 / 80) * height) - margin, top + int((1 - 22 / 80) * height) + margin
    c0, c1 = left + int((1 - 34 / 80) * width) - margin, left + int((1 - 18 / 80) * width) + margin
    outside[r0:r1, c0:c1] = False
    assert differs[outside].mean() < 0.002
    hot = full[r0 + 2 * margin:r1 - 2 * margin, c0 + 2 * margin:c1 - 2 * margin].reshape(-1, 3).mean(axis=0)
    assert hot[0] > hot[2] + 60, f"Grad-CAM's top values are inferno's yellow, got {hot}"
    page["gradcam_full"] = (full, (r0, r1, c0, c1), margin)
    page["ct_alone"] = ct_alone


def screen_box(square, j0, j1, i0, i1) -> tuple:
    """(row0, row1, col0, col1) on screen of voxels j0..j1, i0..i1 of the 80 x 80 ringed CT (A up, patient right
    on screen left), inside the CT's picture ``square``."""
    top, bottom, left, right = square
    height, width = bottom - top, right - left
    return (top + int((1 - j1 / 80) * height), top + int((1 - j0 / 80) * height),
            left + int((1 - i1 / 80) * width), left + int((1 - i0 / 80) * width))


def test_the_threshold_hides_the_values_below_it(page):
    """Grad-CAM's box: the half at 0.5 of the top shows at the default threshold (0.1) and goes at the highest
    (0.9), while the half at the top value stays; back at 0.1 the picture is the first one again."""
    from selenium.webdriver.common.keys import Keys

    driver = page["driver"]
    if "gradcam_full" not in page:
        pytest.skip("needs the pictures of the first page test")
    full, ct_alone, margin = page["gradcam_full"][0], page["ct_alone"], page["gradcam_full"][2]
    square = ct_square(ct_alone)
    set_slider(driver, "threshold", Keys.END)
    high = wait_for(changed_from(page["axial"], full))
    r0, r1, dim0, dim1 = screen_box(square, 22, 38, 18, 26)
    _, _, bright0, bright1 = screen_box(square, 22, 38, 26, 34)
    rows, dim, bright = slice(r0 + margin, r1 - margin), slice(dim0 + margin, dim1 - margin), slice(bright0 + margin, bright1 - margin)
    shown_then = np.abs(full.astype(int) - ct_alone).max(axis=2) > 30
    shown_now = np.abs(high.astype(int) - ct_alone).max(axis=2) > 30
    save_artefacts(threshold_high=high)
    assert shown_then[rows, dim].mean() > 0.9 and shown_then[rows, bright].mean() > 0.9
    assert shown_now[rows, dim].mean() < 0.02, "values at half the top still show at threshold 0.9"
    assert shown_now[rows, bright].mean() > 0.9, "the top values went too"
    set_slider(driver, "threshold", Keys.HOME)
    for _ in range(2):  # 0 -> 0.1 in the slider's steps of 0.05
        set_slider(driver, "threshold", Keys.ARROW_RIGHT)

    def back():  # the half at 0.5 shows again (the legend beside the CT is redrawn, so not the whole picture)
        now = page["axial"]()
        return now is not None and now.shape == full.shape and (
            np.abs(now.astype(int) - ct_alone).max(axis=2)[rows, dim] > 30).mean() > 0.9

    wait_for(back)


def test_the_reference_is_outlined_and_the_metrics_are_its(page):
    """The report names a reference liver (the labelled liver moved 3 voxels): the page lists Dice, IoU and the
    volumes as counted here from the two boxes, an HD95 within the shift, and draws the reference as a white
    outline where the moved box lies."""
    from SegXAILib.review.reference import METRICS

    driver = page["driver"]
    if "ct_alone" not in page:
        pytest.skip("needs the pictures of the first page test")
    rows = wait_for(lambda: driver.find_elements("css selector", "#metrics .metric-row"))
    shown = {r.find_element("css selector", ".metric-name").text: float(r.find_element("css selector", ".metric-value").text)
             for r in rows}
    names = {key: name for key, name, _ in METRICS}
    predicted = np.zeros((6, 80, 80), bool)
    predicted[LIVER] = True
    reference = np.roll(predicted, REFERENCE_SHIFT, axis=1)
    both = np.count_nonzero(predicted & reference)
    voxel_ml = 1.5 * 1.5 * 3.0 / 1000
    assert shown[names["dice"]] == pytest.approx(2 * both / (predicted.sum() + reference.sum()), rel=5e-3)
    assert shown[names["iou"]] == pytest.approx(both / np.count_nonzero(predicted | reference), rel=5e-3)
    assert shown[names["volume_ref_ml"]] == pytest.approx(reference.sum() * voxel_ml, rel=5e-3)
    assert 0 < shown[names["hd95_mm"]] <= REFERENCE_SHIFT * 1.5 + 1e-6  # no surface point is further than the shift
    note = driver.find_element("id", "reference-note").text
    assert "case_reference_liver.nii.gz" in note and "label value 1" in note
    ct_alone = page["ct_alone"]  # opacity 0: the CT, the outlines
    square = ct_square(ct_alone)
    top, bottom, left, right = square
    white = ct_alone.min(axis=2) >= 240  # the outline; the legend's text is white too, at the view's right
    r0, r1, c0, c1 = screen_box(square, 14 + REFERENCE_SHIFT, 46 + REFERENCE_SHIFT, 10, 42)
    slack = int(np.ceil((right - left) / 80)) + 2
    save_artefacts(reference_white=(white[..., None] * np.array([255, 255, 255])).astype(np.uint8))

    def along(rows, cols) -> float:  # share of an edge's positions with a white pixel within the slack
        return float(np.mean([white[r, c].any() for r, c in zip(rows, cols)]))

    span_c = range(c0 + slack, c1 - slack)
    span_r = range(r0 + slack, r1 - slack)
    assert along([slice(r0 - slack, r0 + slack)] * len(span_c), span_c) > 0.9, "no outline along the top edge"
    assert along([slice(r1 - slack, r1 + slack)] * len(span_c), span_c) > 0.9, "no outline along the bottom edge"
    assert along(span_r, [slice(c0 - slack, c0 + slack)] * len(span_r)) > 0.9, "no outline along the left edge"
    interior = white[r0 + slack:r1 - slack, c0 + slack:c0 + int(0.8 * (c1 - c0))]
    assert interior.mean() < 0.01, "white inside the reference box: not an outline"


def test_segments_are_listed_with_the_colours_the_views_draw(page):
    """The list names every segment of the .seg.nrrd and the reference; each swatch has the colour written into
    the file, and the liver's outline in the axial view (its edge away from the reference's) has that colour."""
    driver = page["driver"]
    if "ct_alone" not in page:
        pytest.skip("needs the pictures of the first page test")
    items = wait_for(lambda: driver.find_elements("css selector", "#segments .segment"))
    swatches = {i.find_element("css selector", ".segment-name").text:
                i.find_element("css selector", ".segment-swatch").value_of_css_property("background-color") for i in items}
    assert set(swatches) == {"liver", "spleen", "reference liver"}

    def rgb(css: str) -> np.ndarray:
        return np.array([int(v) for v in re.findall(r"\d+", css)[:3]])

    for c in CLASSES[1:]:
        assert tuple(rgb(swatches[c.name])) == tuple(c.color), c.name
    assert tuple(rgb(swatches["reference liver"])) == (255, 255, 255)
    ct_alone = page["ct_alone"]
    square = ct_square(ct_alone)
    r0, r1, c0, c1 = screen_box(square, 14, 46, 10, 42)  # the predicted liver; its j=14 edge is the bottom row r1
    slack = int(np.ceil((square[3] - square[2]) / 80)) + 2
    band = ct_alone[r1 - slack:r1 + slack, c0 + 3 * slack:c1 - 3 * slack].astype(int)
    near = np.abs(band - rgb(swatches["liver"])).max(axis=2) < 40
    assert near.any(axis=0).mean() > 0.9, "the liver's outline is not drawn in its listed colour"


def curve_values(driver, kind: str) -> dict:
    """{method: stroke colour} of the plot of ``kind`` and the shown method's point values (from their titles)."""
    svg = driver.find_element("css selector", f"#curves svg[data-kind={kind}]")
    strokes = {line.get_attribute("data-method"): line.get_attribute("stroke")
               for line in svg.find_elements("css selector", "polyline")}
    titles = [c.find_element("tag name", "title").get_attribute("textContent") for c in svg.find_elements("tag name", "circle")]
    return {"strokes": strokes, "values": [float(t.rsplit("score ", 1)[1]) for t in titles], "svg": svg}


def test_the_curves_are_the_reports_and_follow_the_method(page):
    """Both plots hold every method and both controls; the shown method's points are the report's values, drawn
    in the shown colour, falling on the deletion plot and rising on the insertion plot (the picture's pixels)."""
    from SegXAILib.review.curves import SHOWN_COLOUR

    driver = page["driver"]
    wait_for(lambda: driver.find_elements("css selector", "#curves svg"))
    shown_rgb = np.array([int(SHOWN_COLOUR[i:i + 2], 16) for i in (1, 3, 5)])
    quality = page["report"]["methods"]["gradcam"]["quality"]
    for kind, falls in (("deletion", True), ("insertion", False)):
        plot = curve_values(driver, kind)
        assert set(plot["strokes"]) == {"gradcam", "ig", "control: random", "control: edge"}
        assert plot["strokes"]["gradcam"] == SHOWN_COLOUR and plot["strokes"]["ig"] != SHOWN_COLOUR
        assert plot["values"] == pytest.approx(quality[f"{kind}_curve"], abs=5e-3)
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", plot["svg"])  # the drawer scrolls
        pixels = element_pixels(plot["svg"]).astype(int)
        save_artefacts(**{f"curves_{kind}": pixels.astype(np.uint8)})
        ours = np.abs(pixels - shown_rgb).max(axis=2) < 40
        rows, cols = np.nonzero(ours)
        assert rows.size > 20, f"the shown curve is not drawn on the {kind} plot"
        first, last = rows[cols <= cols.min() + 3].mean(), rows[cols >= cols.max() - 3].mean()
        assert (first < last) if falls else (first > last), f"the {kind} curve goes the wrong way on screen"


def test_switching_the_method_changes_the_overlay_and_the_scores(page):
    """IG is negative (blue) where Grad-CAM is hot (yellow): clicking IG must turn the box blue, and the table
    must show IG's scores from the report."""
    from SegXAILib.score_labels import plain_name

    driver = page["driver"]
    if "gradcam_full" not in page:
        pytest.skip("needs the picture of the test before")
    full, (r0, r1, c0, c1), margin = page["gradcam_full"]
    before = wait_for(page["axial"])  # now, not the first test's picture: the tests between redrew the legend
    start = time.perf_counter()
    driver.find_element("id", "method-ig").click()
    switched = wait_for(changed_from(page["axial"], before), pause=0.02, tries=3000)
    page["figures"]["method_switch_s"] = time.perf_counter() - start
    hot = switched[r0 + 2 * margin:r1 - 2 * margin, c0 + 2 * margin:c1 - 2 * margin].reshape(-1, 3).mean(axis=0)
    assert hot[2] > hot[0] + 60, f"IG's negative values are blue, got {hot}"
    report = page["report"]["methods"]["ig"]
    shown = wait_for(lambda: (lambda s: s if plain_name("completeness_error") in s else None)(scores_shown(driver)))
    for key, value in numbers(dict(report["quality"], **report["checks"])).items():
        assert float(shown[plain_name(key)]) == pytest.approx(float(value), rel=5e-3), key
    assert driver.find_element("id", "legend").text.startswith("Integrated Gradients: liver")
    from SegXAILib.review.curves import SHOWN_COLOUR

    plot = wait_for(lambda: (lambda p: p if p["strokes"].get("ig") == SHOWN_COLOUR else None)(curve_values(driver, "deletion")))
    assert plot["values"] == pytest.approx(report["quality"]["deletion_curve"], abs=5e-3)
    artefacts = os.environ.get("SEGXAI_RENDER_ARTEFACTS")
    if artefacts:
        Path(artefacts).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(artefacts) / "review_page.png"))


def test_choosing_another_case_shows_its_picture_and_scores(page):
    """The folder holds two cases: choosing 'other' in the case list shows its Grad-CAM scores (from its own
    report) and moves the hot box from the liver to the spleen (the picture changes)."""
    from SegXAILib.score_labels import plain_name

    driver = page["driver"]
    driver.find_element("id", "method-gradcam").click()
    wait_for(lambda: driver.find_element("id", "legend").text.startswith("Grad-CAM: liver"))
    before = wait_for(page["axial"])
    start = time.perf_counter()
    driver.find_element("xpath", "//input[@id='case-select']/ancestor::div[contains(@class,'v-field')]").click()
    wait_for(lambda: [e for e in driver.find_elements("css selector", ".v-list-item") if e.text.strip() == "other"])[0].click()
    expected = page["other"]["methods"]["gradcam"]["quality"]
    wanted = f"{expected['energy_inside']:.3g}"
    shown = wait_for(lambda: (lambda s: s if s.get(plain_name("energy_inside")) == wanted else None)(scores_shown(driver)))
    for key, value in numbers(expected).items():
        assert float(shown[plain_name(key)]) == pytest.approx(float(value), rel=5e-3), key
    wait_for(changed_from(page["axial"], before))
    page["figures"]["case_switch_s"] = time.perf_counter() - start


def test_a_session_leaves_the_results_folder_unchanged(page):
    from SegXAILib.review.folder import folder_digest

    assert folder_digest(page["out"]) == page["before"]


# ---- computing first: segxai review CT --model M ------------------------------------------------------------
def test_review_says_what_it_cannot_show_or_compute(tmp_path):
    """No traceback, one line naming the problem: a missing input, an empty folder, computing options given with a
    results folder, a results folder (-o) that is not empty."""
    from types import SimpleNamespace

    from SegXAILib.cli_review import plan

    def args(folder, **given):
        base = {n: None for n in ("ct", "reference", "output", "model", "methods", "target", "region", "layer", "steps",
                                  "scores", "device")}
        base.update(no_quality=False, trust_model=False)
        base.update(given)
        return SimpleNamespace(folder=str(folder), **base)

    with pytest.raises(SegXAIError, match="does not exist"):
        plan(args(tmp_path / "missing.nii.gz"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SegXAIError, match="is empty"):
        plan(args(tmp_path / "empty"))
    write_case(tmp_path / "out")
    with pytest.raises(SegXAIError, match="--model only apply when computing"):
        plan(args(tmp_path / "out", model="segxai-resunet-3mm"))
    folder, job = plan(args(tmp_path / "out"))
    assert folder == tmp_path / "out" and job is None
    with pytest.raises(SegXAIError, match="not empty"):
        plan(args(tmp_path / "out" / "case.nii.gz", output=str(tmp_path / "out")))
    folder, job = plan(args(tmp_path / "out" / "case.nii.gz", model="segxai-resunet-3mm", methods="hirescam", no_quality=True))
    assert folder is None and job.options == ["--model", "segxai-resunet-3mm", "--methods", "hirescam", "--no-quality"]


def test_progress_lines_become_stages_with_their_times():
    """segxai explain's JSON lines, as the page lists them: a stage lasts from its first line to the next stage's
    first line (then it is complete), other lines are kept as messages."""
    from SegXAILib.review.compute import ExplainJob

    job = ExplainJob(Path("ct.nii.gz"), None, [])
    feed = [('segxai: model: segxai-resunet-3mm', 0.0), ('{"stage": "segmenting", "fraction": 0.0}', 1.0),
            ('{"stage": "segmenting", "fraction": 0.5}', 3.0), ('{"stage": "hirescam", "fraction": 0.25}', 6.0)]
    assert [job.follow(line, t) for line, t in feed] == [False, True, True, True]
    assert job.messages == ["segxai: model: segxai-resunet-3mm"]
    assert job.lines(now=10.0) == [{"name": "segmenting", "text": "100%, 5.0 s"}, {"name": "hirescam", "text": "25%, 4.0 s"}]


def test_a_failing_computation_ends_with_its_one_line_error(tmp_path):
    """A file that is no CT: the background segxai explain fails, and the job gives its own one-line error (what the
    page shows), not a traceback; nothing is written."""
    import asyncio

    from SegXAILib.review.compute import ExplainJob

    bad = tmp_path / "notes.nii.gz"
    bad.write_text("this is not an image")
    job = ExplainJob(bad, tmp_path / "results", ["--model", "segxai-resunet-3mm", "--no-quality"])
    seen = []
    code = asyncio.run(job.run(lambda j: seen.append(len(j.messages))))
    assert code == 1 and seen, job.messages
    assert job.error and "notes.nii.gz" in job.error and "Traceback" not in "\n".join(job.messages)
    assert not any((tmp_path / "results").iterdir())


def test_review_of_a_ct_computes_first_with_its_progress_in_the_page(tmp_path):
    """segxai review on the bundled sample CT with a bundled model: the page lists the stages of the run with their
    progress, then shows the map (HiResCAM, its legend, colours over the CT) from the results kept in -o."""
    require_web()
    from selenium.webdriver.common.keys import Keys

    from SegXAILib.volume import Volume, read_volume, write_volume

    out = tmp_path / "results"
    sample = read_volume(ROOT / "Resources" / "Samples" / "ct_totalseg_A.nii.gz")
    k0, j0, i0 = 40, 10, 30  # the liver's part of the sample (about one window of the model: a CI-sized run)
    shift = np.eye(4)
    shift[:3, 3] = [i0, j0, k0]
    ct = tmp_path / "ct_liver.nii.gz"
    write_volume(Volume(np.ascontiguousarray(sample.array[k0:, j0:96, i0:]), sample.ijk_to_ras @ shift), ct)
    driver = browser_or_skip()
    served = Served(ct, "--model", "segxai-resunet-3mm", "--methods", "hirescam", "--no-quality", "-o", str(out))
    try:
        driver.get(served.url)
        def legend_text():  # the page may not be drawn yet
            found = driver.find_elements("id", "legend")
            return found[0].text if found else ""

        legend = wait_for(lambda: (lambda t: t if t.startswith("HiResCAM: liver") else None)(legend_text()), tries=6000)
        assert "HiResCAM" in legend
        stages = [r.find_element("css selector", ".progress-name").text
                  for r in driver.find_elements("css selector", "#progress .progress-row")]
        assert len(stages) >= 2 and any("hirescam" in s.lower() for s in stages), stages
        assert not driver.find_element("id", "progress-error").text
        assert (out / "ct_liver_explain.json").is_file() and (out / "ct_liver_hirescam_liver.nrrd").is_file()

        shown = wait_for(lambda: axial_picture(driver))
        set_slider(driver, "opacity", Keys.HOME)
        ct_alone = wait_for(lambda: (lambda p: p if p is not None and np.abs(p.astype(int) - shown).max() > 30 else None)(
            axial_picture(driver)))
        differs = np.abs(shown.astype(int) - ct_alone).max(axis=2) > 30
        save_artefacts(computed=shown)
        assert differs.mean() > 0.005, "no map over the CT"
    finally:
        driver.quit()
        served.stop()
