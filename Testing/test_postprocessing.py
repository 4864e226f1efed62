"""The card's clean-up rules: largest component per organ, lesions kept only inside their host organ."""
from __future__ import annotations

import numpy as np

from SegXAILib.models.card import ClassInfo
from SegXAILib.postprocessing import postprocess

CLASSES = [ClassInfo(0, "background"), ClassInfo(1, "liver"), ClassInfo(2, "liver tumor"), ClassInfo(3, "spleen")]
RULES = {"largest_component": ["liver", "spleen"], "inside": {"liver tumor": "liver"}}


def test_keeps_the_largest_liver_and_tumours_inside_it():
    lab = np.zeros((10, 10, 30), np.uint8)
    lab[2:8, 2:8, 2:12] = 1  # the liver
    lab[4:6, 4:6, 10:14] = 2  # a tumour at its edge, sticking out
    lab[2:4, 2:4, 20:22] = 1  # a stray liver island
    lab[6:8, 6:8, 25:27] = 2  # a "tumour" far from the liver
    lab[1:3, 1:3, 16:18] = 3  # spleen
    out = postprocess(lab, CLASSES, RULES)
    assert not (out[2:4, 2:4, 20:22] == 1).any()
    assert not (out[6:8, 6:8, 25:27] == 2).any()
    assert (out[4:6, 4:6, 10:14] == 2).all()
    assert (out[2:8, 2:8, 2:10] == 1).all()
    assert (out == 3).sum() == 8
    assert lab[2, 2, 20] == 1  # the input is not modified


def test_a_tumour_splitting_the_liver_keeps_both_halves():
    lab = np.zeros((6, 6, 21), np.uint8)
    lab[1:5, 1:5, 0:10] = 1
    lab[1:5, 1:5, 10] = 2  # tumour slab between two liver halves
    lab[1:5, 1:5, 11:21] = 1
    out = postprocess(lab, CLASSES, RULES)
    assert np.array_equal(out, lab)
