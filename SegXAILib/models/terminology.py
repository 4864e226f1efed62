"""Slicer terminology for class names other models use (TotalSegmentator's, the usual abdominal organs): a SNOMED CT
type, a laterality modifier read from the name (``kidney_right``, ``left kidney``), and a colour.

Names are matched after lower-casing and turning ``_`` into spaces; a whole name is looked up first (the lung
lobes carry their side in the concept), then the name without its side. Unknown names get no terminology and
keep their own name; ``ClassInfo.known`` falls back to this table after SegXAI's own classes.
"""
from __future__ import annotations

from typing import Optional

ANATOMY = ["SCT", "123037004", "Anatomical Structure"]
SIDES = {"left": ["SCT", "7771000", "Left"], "right": ["SCT", "24028007", "Right"]}

#: normalised name → (SNOMED CT code, meaning, colour 0–255)
STRUCTURES = {
    "liver": ("10200004", "Liver", (221, 130, 101)),
    "spleen": ("78961009", "Spleen", (157, 108, 162)),
    "kidney": ("64033007", "Kidney", (185, 102, 83)),
    "gallbladder": ("28231008", "Gallbladder", (139, 150, 98)),
    "stomach": ("69695003", "Stomach", (216, 132, 105)),
    "pancreas": ("15776009", "Pancreas", (249, 180, 111)),
    "adrenal gland": ("23451007", "Adrenal gland", (244, 214, 49)),
    "esophagus": ("32849002", "Esophagus", (211, 171, 143)),
    "trachea": ("44567001", "Trachea", (182, 228, 255)),
    "thyroid gland": ("69748006", "Thyroid", (220, 245, 20)),
    "small bowel": ("30315005", "Small intestine", (205, 167, 142)),
    "small intestine": ("30315005", "Small intestine", (205, 167, 142)),
    "duodenum": ("38848004", "Duodenum", (255, 253, 229)),
    "colon": ("71854001", "Colon", (204, 168, 143)),
    "urinary bladder": ("89837001", "Urinary bladder", (222, 154, 132)),
    "bladder": ("89837001", "Urinary bladder", (222, 154, 132)),
    "prostate": ("41216001", "Prostate", (230, 158, 140)),
    "heart": ("80891009", "Heart", (206, 110, 84)),
    "aorta": ("15825003", "Aorta", (224, 97, 76)),
    "inferior vena cava": ("64131007", "Inferior vena cava", (0, 151, 206)),
    "portal vein and splenic vein": ("32764006", "Portal vein", (0, 122, 171)),
    "portal vein": ("32764006", "Portal vein", (0, 122, 171)),
    "brain": ("12738006", "Brain", (250, 250, 225)),
    "spinal cord": ("2748008", "Spinal cord", (244, 214, 49)),
    "lung": ("39607008", "Lung", (197, 165, 145)),
    "lung upper lobe left": ("45653009", "Upper lobe of left lung", (172, 138, 115)),
    "lung lower lobe left": ("90572001", "Lower lobe of left lung", (202, 164, 140)),
    "lung upper lobe right": ("42400003", "Upper lobe of right lung", (224, 186, 162)),
    "lung middle lobe right": ("72481006", "Middle lobe of right lung", (172, 138, 115)),
    "lung lower lobe right": ("266005", "Lower lobe of right lung", (202, 164, 140)),
    "sacrum": ("54735007", "Sacrum", (212, 188, 102)),
    "femur": ("71341001", "Femur", (255, 255, 207)),
    "humerus": ("85050009", "Humerus", (255, 255, 207)),
    "scapula": ("79601000", "Scapula", (255, 255, 207)),
    "clavicula": ("51299004", "Clavicle", (255, 255, 207)),
    "clavicle": ("51299004", "Clavicle", (255, 255, 207)),
    "sternum": ("56873002", "Sternum", (255, 255, 207)),
    "skull": ("89546000", "Skull", (255, 255, 207)),
    "iliac artery": ("73634005", "Common iliac artery", (216, 101, 79)),
    "iliac vena": ("46027005", "Common iliac vein", (0, 151, 206)),
    "brachiocephalic trunk": ("12691009", "Brachiocephalic trunk", (216, 101, 79)),
    "subclavian artery": ("36765005", "Subclavian artery", (216, 101, 79)),
    "common carotid artery": ("32062004", "Common carotid artery", (216, 101, 79)),
}


def normalise(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


def split_side(name: str) -> tuple:
    """('kidney', 'right') from 'kidney right' or 'right kidney'; (name, None) without a side."""
    words = name.split()
    for i in (0, len(words) - 1):
        if len(words) > 1 and words[i] in SIDES:
            return " ".join(words[:i] + words[i + 1:]), words[i]
    return name, None


def lookup(name: str) -> Optional[dict]:
    """{'color', 'category', 'type'[, 'typeModifier']} for a known structure name, else None."""
    name = normalise(name)
    side = None
    entry = STRUCTURES.get(name)
    if entry is None:
        name, side = split_side(name)
        entry = STRUCTURES.get(name)
    if entry is None:
        return None
    code, meaning, colour = entry
    out = {"color": list(colour), "category": ANATOMY, "type": ["SCT", code, meaning]}
    if side:
        out["typeModifier"] = SIDES[side]
    return out
