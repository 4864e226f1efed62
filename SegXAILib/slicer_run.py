"""Run SegXAI as a child process for the Slicer module (and ``segxai scene``): files in, files out, progress lines.

The module starts ``PythonSlicer`` with :func:`child_command`; the child runs :func:`run_job`, writes labels,
maps and ``manifest.json`` into a temporary folder and reports on stdout with one line per event
(``SEGXAI-PROGRESS {json}``, ``SEGXAI-DONE path``, ``SEGXAI-ERROR message``) that :func:`parse_line` reads.
The parent then puts the files in the scene with :func:`load_job` and :mod:`SegXAILib.scene`.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Optional

PROGRESS, DONE, ERROR, LOG = "SEGXAI-PROGRESS", "SEGXAI-DONE", "SEGXAI-ERROR", "log"
MANIFEST = "manifest.json"
METHODS = ("gradcam", "hirescam", "gradcampp", "ig", "lrp")
#: methods whose raw values are signed (diverging colour map); the CAM family is non-negative
SIGNED_METHODS = ("ig", "lrp")


# ---- the line protocol --------------------------------------------------------------------------
def progress_line(stage: str, fraction: float) -> str:
    """The stdout line for one progress event."""
    return f"{PROGRESS} " + json.dumps({"stage": str(stage), "fraction": round(float(fraction), 4)})


def parse_line(line: str) -> tuple:
    """(kind, payload): ('progress', (stage, fraction)), ('done', manifest path), ('error', text), ('log', line)."""
    line = line.rstrip("\r\n")
    head, _, rest = line.partition(" ")
    if head == PROGRESS:
        try:
            data = json.loads(rest)
            return "progress", (str(data["stage"]), min(1.0, max(0.0, float(data["fraction"]))))
        except (ValueError, KeyError, TypeError):
            return LOG, line
    if head == DONE:
        return "done", rest
    if head == ERROR:
        return "error", rest
    return LOG, line


def child_command(python: str, options: dict, out_dir: str | os.PathLike) -> list:
    """argv for the child: ``python -c <bootstrap> --options JSON --output DIR`` with SegXAILib importable."""
    lib_parent = str(Path(__file__).resolve().parent.parent)
    bootstrap = (
        "import sys; sys.path.insert(0, {!r}); from SegXAILib.slicer_run import main; sys.exit(main())".format(lib_parent)
    )
    return [python, "-c", bootstrap, "--options", json.dumps(options), "--output", str(out_dir)]


# ---- the job ------------------------------------------------------------------------------------
def options_from(input_path, model=None, device="auto", methods=(), target=None, region="predicted",
                 layer=None, steps=None, quality=False) -> dict:
    """The job's options as plain JSON values, checked (unknown methods are a clear error)."""
    from .errors import SegXAIError

    methods = [m.strip().lower() for m in (methods or []) if m and m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SegXAIError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    return {"input": str(input_path), "model": model or None, "device": device or "auto", "methods": methods,
            "target": target or None, "region": region or "predicted", "layer": layer or None,
            "steps": int(steps) if steps else None, "quality": bool(quality)}


def normalise_maps(explained) -> list:
    """``[(name, Volume, metadata, signed)]`` from what the explaining step returns.

    Accepts such tuples, dicts, or objects with ``name``/``method``, ``volume``/``map``, ``metadata`` and
    ``signed`` (missing ``signed`` is taken from the method: IG and LRP are signed).
    """
    from .volume import Volume

    common = {}
    if isinstance(explained, dict) and "maps" in explained:
        explained = explained["maps"]
    elif hasattr(explained, "maps"):  # SegXAILib.explaining.ExplanationResult: run-wide layer and target
        container = explained
        explained = container.maps
        if getattr(container, "layer", None):
            common["layer"] = container.layer
        target = getattr(container, "target", None)
        if target is not None:
            common["target_class"] = getattr(target, "class_name", None)
            common["region"] = getattr(target, "description", None) or None
            common["region_voxels"] = getattr(target, "voxels", None)
    out = []
    for item in explained or []:
        if isinstance(item, (tuple, list)):
            name, volume, meta, signed = (list(item) + [None, None])[:4]
        else:
            get = item.get if isinstance(item, dict) else (lambda k, d=None, o=item: getattr(o, k, d))
            meta = dict(get("metadata", None) or get("meta", None) or {})
            name = get("name", None) or get("method", None) or meta.get("method")
            volume = get("volume", None)
            if volume is None:
                volume = get("map", None)
            signed = get("signed", None)
            scores = get("scores", None) or get("quality", None)
            if scores:
                meta.setdefault("scores", scores)
        meta = dict(meta or {})
        params = meta.pop("params", None) or {}
        for key, value in list(params.items()) + list(common.items()):
            if value is not None and not isinstance(value, (dict, list, tuple)):
                meta.setdefault(key, value)
        meta.setdefault("method", str(name))
        if signed is None:
            signed = meta.get("method", name) in SIGNED_METHODS
        if not isinstance(volume, Volume):
            raise TypeError(f"explanation {name!r} is not a Volume")
        out.append((str(name), volume, meta, bool(signed)))
    return out


def explain_maps(volume, result, model, options: dict, progress=None, cancel=None) -> list:
    """Run the explaining step (SegXAILib.explaining) when methods are asked for; [] when none are."""
    from .errors import SegXAIError

    if not options.get("methods"):
        return []
    try:
        from . import explaining
    except ImportError as err:  # name what is missing: "explaining is missing" hid a Windows-only import once
        missing = getattr(err, "name", None) or str(err)
        raise SegXAIError(f"SegXAILib.explaining cannot be imported here ({missing} is missing: {err}); install it, "
                          "or run without explanation methods to get the segmentation only") from None
    function = next((getattr(explaining, n) for n in ("explain_volume", "explain", "run_explanations") if hasattr(explaining, n)), None)
    if function is None:
        raise SegXAIError("SegXAILib.explaining has no explain function this front door knows")
    offered = {
        "volume": volume, "result": result, "segmentation": result, "model": model, "methods": options["methods"],
        "target": options.get("target"), "class_name": options.get("target"), "region": options.get("region"),
        "layer": options.get("layer"), "steps": options.get("steps"), "ig_steps": options.get("steps"),
        "device": options.get("device", "auto"), "progress": progress, "cancel": cancel,
        "quality": bool(options.get("quality")),
    }
    params = inspect.signature(function).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        kwargs = {k: v for k, v in offered.items() if v is not None}
    else:
        kwargs = {k: v for k, v in offered.items() if k in params and v is not None}
    return normalise_maps(function(**kwargs))


def run_job(options: dict, out_dir: str | os.PathLike, progress=None, cancel=None) -> Path:
    """Segment (and explain) ``options['input']``; write labels, maps and the manifest into ``out_dir``."""
    from . import __version__
    from .volume import json_safe, read_volume, write_json_atomic, write_volume

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    volume = read_volume(options["input"])  # a bad input fails here, before seconds of importing torch and MONAI
    from .models.store import load_model
    from .pipeline import segment

    model = load_model(options.get("model"), device="cpu")
    result = segment(volume, model, options.get("device", "auto"), progress=progress, cancel=cancel, name=options["input"])
    write_volume(result.labels, out_dir / "labels.nrrd", overwrite=True)
    maps = explain_maps(volume, result, model, options, progress, cancel)
    entries = []
    for k, (name, vol, meta, signed) in enumerate(maps):
        file = f"map_{k}_{''.join(c if c.isalnum() else '_' for c in name)}.nrrd"
        write_volume(vol, out_dir / file, overwrite=True)
        entries.append({"name": name, "file": file, "metadata": json_safe(meta), "signed": signed})
    manifest = {
        "segxai_version": __version__,
        "input": str(options["input"]),
        "model": model.card.name,
        "model_folder": str(Path(model.folder).resolve()),
        "device": result.device,
        "options": options,
        "labels": "labels.nrrd",
        "classes": [c.to_json() for c in model.card.classes],
        "class_table": result.class_table(),
        "maps": entries,
        "seconds": {k: round(v, 3) for k, v in result.seconds.items()},
    }
    return write_json_atomic(manifest, out_dir / MANIFEST, overwrite=True)


def load_job(manifest_path: str | os.PathLike) -> dict:
    """What the parent needs for :func:`SegXAILib.scene.show_results`: labels, classes, maps, provenance."""
    from .errors import SegXAIError
    from .models.card import ClassInfo
    from .volume import read_volume

    manifest_path = Path(manifest_path)
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as err:
        raise SegXAIError(f"the background run left no readable results ({err})") from None
    folder = manifest_path.parent
    classes = [ClassInfo(int(c["value"]), c["name"], list(c.get("color", [128, 174, 128])), c.get("terminology", {}))
               for c in manifest["classes"]]
    maps = [(m["name"], read_volume(folder / m["file"]), m.get("metadata", {}), bool(m.get("signed")))
            for m in manifest["maps"]]
    options = manifest.get("options", {})
    provenance = {"model": manifest.get("model"), "device": manifest.get("device"),
                  "target_class": options.get("target"), "region": options.get("region")}
    return {"labels": read_volume(folder / manifest["labels"]), "classes": classes, "maps": maps, "provenance": provenance, "manifest": manifest}


def scores_rows(maps: list) -> list:
    """One table row per map with every score (nested deletion/insertion included) by plain name; see
    :func:`SegXAILib.score_labels.scores_rows`."""
    from .score_labels import scores_rows as rows

    return rows(maps)


# ---- the child's main -----------------------------------------------------------------------------
def main(argv: Optional[list] = None) -> int:
    """Child entry point: run the job, print progress lines, end with DONE or ERROR (exit 0 / 1)."""
    parser = argparse.ArgumentParser(prog="segxai-slicer-run")
    parser.add_argument("--options", required=True, help="job options as JSON")
    parser.add_argument("--output", required=True, help="folder for labels, maps and manifest.json")
    args = parser.parse_args(argv)

    def report(stage: str, fraction: float) -> None:
        print(progress_line(stage, fraction), flush=True)

    try:
        from .errors import SegXAIError

        path = run_job(json.loads(args.options), args.output, progress=report)
    except SegXAIError as err:
        print(f"{ERROR} {' '.join(str(err).split())}", flush=True)
        return 1
    except MemoryError:
        print(f"{ERROR} out of memory; try the CPU, a smaller input or fewer methods", flush=True)
        return 1
    except Exception as err:  # a bug: still one line for the panel, the traceback for the log
        import traceback

        traceback.print_exc(file=sys.stderr)
        print(f"{ERROR} unexpected {type(err).__name__}: {' '.join(str(err).split())[:300]}", flush=True)
        return 1
    print(f"{DONE} {path}", flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
