"""Pictures for people: slice montages of a CT with the segmentation's contours (and, later, curves)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .volume import Volume, partial_path, refuse_overwrite


def _display_slices(volume: Volume, labels: Volume) -> list:
    """Three axial slices through the foreground and one coronal slice, oriented for display.

    The CT is reoriented to LPS at its finest spacing first, so the picture looks the same whatever the
    file's storage order; rows are flipped so that anterior (axial) and superior (coronal) are at the top.
    """
    from .preprocessing import Preprocessing

    pre = Preprocessing(volume.spacing.min() * np.ones(3), (-1024, 3071), "LPS")
    hu, grid, _ = pre.hu_on_model_grid(volume)
    lab = pre.resample_labels(labels, grid)
    found = np.argwhere(lab > 0)
    ks = np.unique(found[:, 0]) if len(found) else np.array([lab.shape[0] // 2])
    j = int(np.median(found[:, 1])) if len(found) else lab.shape[1] // 2
    panels = []
    for q in (20, 45, 70):
        k = int(np.percentile(ks, q))
        panels.append((hu[k], lab[k], f"axial slice {k}"))
    panels.append((hu[:, j][::-1], lab[:, j][::-1], "coronal"))
    return panels


def segmentation_montage(volume: Volume, labels: Volume, classes: list, path: str | Path, title: str = "", overwrite: bool = False) -> Path:
    """A PNG with three axial slices and one coronal slice, CT in a soft-tissue window, class contours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    panels = _display_slices(volume, labels)
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.4))
    for ax, (hu, lab, name) in zip(axes, panels):
        ax.imshow(hu, cmap="gray", vmin=-160, vmax=240, interpolation="bilinear")
        for c in classes:
            if c.value and (lab == c.value).any():
                ax.contour(lab == c.value, levels=[0.5], colors=[np.array(c.color) / 255.0], linewidths=1.4)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    present = [c for c in classes if c.value and (labels.array == c.value).any()]
    handles = [Line2D([0], [0], color=np.array(c.color) / 255.0, lw=2, label=c.name) for c in present]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    path = Path(path)
    refuse_overwrite(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path
