"""Scores for one explanation run: every map and two control maps scored the same way, and which controls beat which method.

A score means little alone: each run also scores a random map and an edge-detector map of the image (neither
knows the model), and a method that does not beat both on a score is named in a warning, as the score's failure
or the method's (``beaten_by_controls``). All on the model grid; the reference label, when given, is taken to the
model grid once.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .errors import SegXAIError
from .preprocessing import labels_on_grid
from .quality import (DEFAULT_GROUPS, GROUPS, SCORES, array_spacing, cascading_randomisation, control_maps,
                      evaluate_map, region_probability, removal_baseline)

#: the scores a real method must beat both controls on, and in which direction (True: higher is better)
COMPARED = {"energy_inside": True, "relevance_rank_accuracy": True, "deletion_auc_normalised": False,
            "insertion_auc_normalised": True, "road_morf_auc": False, "road_lerf_auc": True,
            "faithfulness_correlation": True, "randomisation_spearman": False}


def check_groups(groups: Sequence[str]) -> list:
    """The score groups asked for, checked against ``quality.GROUPS`` before any work starts."""
    groups = [g.strip() for g in (groups.split(",") if isinstance(groups, str) else groups) if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise SegXAIError(f"unknown score group {unknown[0]!r}; use some of {', '.join(GROUPS)}")
    return groups


def reference_mask(reference, class_value: int, grid) -> tuple:
    """(mask on the model grid, how it was read): the voxels of the class's value when the label has it, else
    every non-zero voxel (a single-organ mask)."""
    values = np.unique(reference.array)
    if class_value in values:
        picked, how = (reference.array == class_value), f"label value {class_value}"
    else:
        picked, how = (reference.array != 0), "non-zero voxels"
    if not picked.any():
        raise SegXAIError("the reference label is empty; give a label volume that contains the target class")
    return labels_on_grid(reference.like(picked.astype(np.uint8)), grid) != 0, how


class MapScorer:
    """Scores model-grid maps of one target with ``quality.evaluate_map``, the controls included."""

    def __init__(self, model, pre, target, device, reference=None, groups: Sequence[str] = DEFAULT_GROUPS,
                 steps: int = 10, seed: int = 0, progress: Optional[Callable[[str, float], None]] = None) -> None:
        self.model, self.pre, self.target = model, pre, target
        self.groups, self.steps, self.seed, self.progress = check_groups(groups), int(steps), int(seed), progress
        card = model.card
        self.score = region_probability(model.network, target.class_value, target.region, card.patch, card.overlap, device,
                                        model.windowing)
        self.baseline = removal_baseline(pre.image, model.preprocessing.window)
        self.reference, self.reference_read = (None, "")
        if reference is not None:
            self.reference, self.reference_read = reference_mask(reference, target.class_value, pre.grid)
        self.against = "reference" if self.reference is not None else "prediction"
        self.body = None
        if "body_deletion_insertion" in self.groups:
            from .quality import body_region

            self.body = body_region(pre.image, model.preprocessing.window)

    def scores(self, saliency: np.ndarray, stage: str = "") -> dict:
        """The run's score groups for one map (keys in ``quality.SCORES``)."""
        report = (lambda s, f: self.progress(f"{stage}: {s}", f)) if self.progress is not None else None
        out = evaluate_map(saliency, image=self.pre.image, baseline=self.baseline, score=self.score,
                           target_region=self.target.region, body_region=self.body, reference=self.reference,
                           spacing=array_spacing(self.pre.grid), steps=self.steps, seed=self.seed, which=self.groups,
                           progress=report)
        if self.reference is not None:
            out["reference_read_as"] = self.reference_read
        return out

    def controls(self) -> dict:
        """The same scores for a random map and an edge-detector map (``quality.control_maps``)."""
        return {name: self.scores(m, f"control {name}") for name, m in control_maps(self.pre.image, None, self.seed).items()}

    def randomisation(self, network: torch.nn.Module, explain_fn, original: np.ndarray, groups: int = 3) -> dict:
        """Cascading randomisation from the output side in ``groups`` steps (figures at each step and the last)."""
        patch = self.model.card.patch
        r = cascading_randomisation(network, explain_fn, original, seed=self.seed, groups=groups,
                                    example_input=torch.zeros(1, 1, *patch, device=next(network.parameters()).device))
        steps = [{k: v for k, v in step.items() if k != "layers"} | {"layers_randomised": len(step["layers"])}
                 for step in r["steps"]]
        return {**{k: v for k, v in r.items() if k != "steps"}, "randomisation_steps": steps}


def beaten_by_controls(method: str, scores: dict, controls: dict) -> list:
    """One warning per score on which a control map does as well as ``method`` (equal counts as beaten)."""
    out = []
    for key, higher in COMPARED.items():
        mine = scores.get(key)
        if not isinstance(mine, (int, float)) or mine != mine:
            continue
        better = [name for name, c in controls.items() if isinstance(c.get(key), (int, float)) and c[key] == c[key]
                  and (c[key] >= mine if higher else c[key] <= mine)]
        if better:
            plain = SCORES.get(key, (key,))[0]
            who = f"the {better[0]} control map does" if len(better) == 1 else f"the {' and the '.join(better)} control maps do"
            out.append(f"on {plain}, {who} as well as {method} "
                       f"({mine:.3g} vs {', '.join(f'{controls[b][key]:.3g}' for b in better)}): the method failed "
                       "to explain this, or the score cannot tell here")
    return out
