"""The cohort's results: ``results.csv`` (and ``results.parquet`` when pyarrow is installed), one row per case ×
class, and ``summary.md`` with the distributions (and ``summary.png`` of them) and the failed cases with their
one-line errors. Built from the manifest's records, so a rerun or another shard rebuilds the same table.
"""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

from ..volume import write_atomically

FIRST_COLUMNS = ["case", "status", "error", "class", "explained", "target_region", "volume_ml", "dice", "iou",
                 "hd95_mm", "volume_ref_ml"]
#: columns whose spread summary.md shows (besides every score column of the explained class)
SUMMARY_COLUMNS = ["volume_ml", "dice", "hd95_mm"]


def table_rows(records: list) -> list:
    """Flat rows: each done case's class rows, each failed case's one row with its error."""
    rows = []
    for r in sorted(records, key=lambda r: r["case"]):
        if r.get("status") == "done":
            rows.extend(dict(row, case=r["case"], status="done") for row in r["rows"])
        else:
            rows.append({"case": r["case"], "status": r.get("status", "failed"), "error": r.get("error") or "unknown error"})
    return rows


def columns(rows: list) -> list:
    extra = sorted({k for row in rows for k in row} - set(FIRST_COLUMNS))
    return FIRST_COLUMNS + extra


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if math.isinf(v) and v > 0 else ("-inf" if math.isinf(v) else repr(v)))
    return str(v)


def write_csv(rows: list, path: Path) -> Path:
    """results.csv, full float precision, empty cells for what a row does not have."""
    cols = columns(rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(cols)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in cols])
    return write_atomically(path, lambda tmp: tmp.write_text(buf.getvalue()))


def write_parquet(rows: list, path: Path):
    """results.parquet when pandas and pyarrow are installed; None otherwise."""
    try:
        import pandas as pd
        import pyarrow  # noqa: F401
    except ImportError:
        return None
    frame = pd.DataFrame([{c: row.get(c) for c in columns(rows)} for row in rows])
    return write_atomically(path, lambda tmp: frame.to_parquet(tmp, index=False))


def _numbers(rows: list, column: str, explained_only: bool = False) -> dict:
    """Finite values of ``column`` by class."""
    out = {}
    for row in rows:
        v = row.get(column)
        if row.get("status") != "done" or (explained_only and not row.get("explained")):
            continue
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out.setdefault(row["class"], []).append(float(v))
    return out


def _spread(values: list) -> str:
    import numpy as np

    a = np.asarray(values)
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return f"{len(a)} | {med:.4g} | {q1:.4g} – {q3:.4g} | {a.min():.4g} – {a.max():.4g}"


def summary_text(records: list, rows: list, png_name: str, skipped: int = 0) -> str:
    done = [r for r in records if r.get("status") == "done"]
    failed = [r for r in records if r.get("status") != "done"]
    lines = ["# segxai batch: summary", "",
             f"{len(records)} case(s): {len(done)} done, {len(failed)} failed" + (f" ({skipped} skipped as already done in this run)" if skipped else "") + ".",
             "", f"![distributions]({png_name})", "",
             "| measure | class | n | median | IQR | range |", "|---|---|---|---|---|---|"]
    score_cols = [c for c in columns(rows) if c not in FIRST_COLUMNS]
    for column in SUMMARY_COLUMNS + score_cols:
        for cls, values in sorted(_numbers(rows, column, column in score_cols).items()):
            lines.append(f"| {column} | {cls} | {_spread(values)} |")
    lines += ["", "## Failed cases", ""]
    lines += [f"- `{r['case']}` ({r.get('image', '')}): {r.get('error') or 'unknown error'}" for r in sorted(failed, key=lambda r: r["case"])] or ["none"]
    return "\n".join(lines) + "\n"


def write_plot(rows: list, path: Path) -> Path:
    """Box plots of volume, Dice and HD95 per class and of the explained class's scores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    score_cols = [c for c in columns(rows) if c not in FIRST_COLUMNS]
    panels = [(c, _numbers(rows, c)) for c in SUMMARY_COLUMNS]
    panels = [(c, d) for c, d in panels if d]
    scores = {c: sum(_numbers(rows, c, True).values(), []) for c in score_cols}
    scores = {c: v for c, v in scores.items() if v}
    n = len(panels) + (1 if scores else 0)
    fig, axes = plt.subplots(1, max(n, 1), figsize=(4.5 * max(n, 1), 4), squeeze=False)
    for ax, (column, data) in zip(axes[0], panels):
        ax.boxplot(list(data.values()))
        ax.set_xticks(range(1, len(data) + 1), list(data.keys()), rotation=30, ha="right", fontsize=8)
        ax.set_title(column)
    if scores:
        ax = axes[0][len(panels)]
        try:
            ax.boxplot(list(scores.values()), orientation="horizontal")
        except TypeError:  # matplotlib before 3.10
            ax.boxplot(list(scores.values()), vert=False)
        ax.set_yticks(range(1, len(scores) + 1), list(scores.keys()), fontsize=7)
        ax.set_title("explanation scores (explained class)")
    if n == 0:
        axes[0][0].text(0.5, 0.5, "no finished case", ha="center")
    fig.tight_layout()
    try:
        return write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=80))
    finally:
        plt.close(fig)


def write_results(records: list, out_dir: str | os.PathLike, skipped: int = 0) -> dict:
    """results.csv, results.parquet (when possible), summary.md and summary.png in ``out_dir``."""
    out_dir = Path(out_dir)
    rows = table_rows(records)
    files = {"csv": write_csv(rows, out_dir / "results.csv"), "png": write_plot(rows, out_dir / "summary.png")}
    parquet = write_parquet(rows, out_dir / "results.parquet")
    if parquet:
        files["parquet"] = parquet
    text = summary_text(records, rows, files["png"].name, skipped)
    files["summary"] = write_atomically(out_dir / "summary.md", lambda tmp: tmp.write_text(text))
    return files
