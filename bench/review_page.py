"""How fast the browser review answers: ``segxai review OUT_DIR`` in a real headless Chromium.

Times, for one results folder (e.g. ``segxai explain`` of the bundled sample): the command to its printed URL, the
page load to the first picture of the axial view, and each method switch (click to a changed axial picture), with
the same polling as ``Testing/test_review.py``. Prints the figures and appends one JSON line per run to --out.

    segxai explain Resources/Samples/ct_totalseg_A.nii.gz -o /tmp/ex --methods hirescam,gradcampp,ig
    python bench/review_page.py /tmp/ex --out bench/results/review_page.jsonl [--reference LIVER_MASK] [--screenshot docs/review.png]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "Testing"))

from test_review import Served, axial_picture, browser_or_skip, changed_from, wait_for  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", help="a folder segxai explain wrote")
    ap.add_argument("--rounds", type=int, default=3, help="passes over the methods (each switch timed)")
    ap.add_argument("--reference", default="", help="passed to segxai review (a reference label of the case)")
    ap.add_argument("--out", default="")
    ap.add_argument("--screenshot", default="", help="also save the whole page as this PNG (e.g. docs/review.png)")
    args = ap.parse_args()
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    report = json.loads(next(Path(args.folder).glob("*_explain.json")).read_text())
    methods = list(report["methods"])
    driver = browser_or_skip()
    served = Served(args.folder, *(["--reference", args.reference] if args.reference else []))
    try:
        start = time.perf_counter()
        driver.get(served.url)
        wait_for(lambda: axial_picture(driver), tries=3000)
        first = time.perf_counter() - start
        switches = []
        for _ in range(args.rounds):
            for method in methods[1:] + methods[:1]:
                time.sleep(1.0)  # let the previous picture settle
                before = wait_for(lambda: axial_picture(driver))
                t = time.perf_counter()
                driver.find_element("id", f"method-{method}").click()
                wait_for(changed_from(lambda: axial_picture(driver), before), pause=0.02, tries=3000)
                switches.append(time.perf_counter() - t)
        if args.screenshot:
            time.sleep(3.0)  # the views refit to their browser size
            driver.save_screenshot(args.screenshot)
    finally:
        driver.quit()
        served.stop()
    row = {"folder": str(args.folder), "methods": methods, "command_to_url_s": round(served.startup_s, 2),
           "first_picture_s": round(first, 2), "method_switch_s": [round(s, 3) for s in switches],
           "method_switch_median_s": round(statistics.median(switches), 3), "cpus": os.cpu_count(),
           "machine": platform.machine(), "date": time.strftime("%Y-%m-%d")}
    print(f"command to URL {row['command_to_url_s']} s; page load to first picture {row['first_picture_s']} s; "
          f"method switch median {row['method_switch_median_s']} s (min {min(switches):.3f}, max {max(switches):.3f}, "
          f"{len(switches)} switches)")
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
