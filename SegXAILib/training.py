"""Training: cases with per-case label sets, augmentation, Dice + cross-entropy, Adam, validation, checkpoints.

A *dataset config* (JSON) lists cases. Each case says which of its label values mean which model classes::

    {"id": "A", "image": "totalseg_example/ct.nii.gz", "label": "totalseg_example/organs_v1.nii.gz",
     "groups": {"5": ["liver", "liver tumor"], "1": ["spleen"]}, "source": "...", "licence": "..."}

A label value maps to a *group* of model classes ("this voxel is liver or liver tumour": TotalSegmentator's
liver includes any tumour). Every voxel whose value is not listed belongs to the background group, which
also holds every class the case does not annotate. The loss compares the model's probabilities summed
over each group with the case's groups (the "marginal" loss of Shi et al. 2021), so a class a case does not
annotate is unknown there, never taught as background.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .errors import SegXAIError
from .inference import CancelToken, sliding_window_logits, wants_bf16
from .models.card import ClassInfo, ModelCard
from .models.store import build_network, save_model
from .preprocessing import Preprocessing, labels_on_grid
from .volume import LPS_TO_RAS, read_volume, split_suffix

DEFAULT_INPUT = {"spacing": [3.0, 3.0, 3.0], "orientation": "LPS", "window": [-200.0, 300.0], "patch": [96, 96, 96], "overlap": 0.5}
DEFAULT_TRAIN = {
    "steps": 1200,
    "steps_per_epoch": 50,
    "batch_size": 2,
    "lr": 2e-3,
    "weight_decay": 1e-5,
    "seed": 0,
    "foreground_fraction": 0.7,
    # bf16 autocast where it is fast (GPU; CPU with AMX / AVX512-BF16: 1.9 s against 2.7 s per step here), else fp32;
    # the loss is computed in fp32
    "precision": "auto",
    "augment": {
        "rotate_deg": [15, 10, 10],
        "scale": 0.15,
        "flip_axes": [],
        "noise_std": 0.03,
        "intensity_shift": 0.1,
        "intensity_scale": 0.1,
        "gamma": [0.7, 1.5],
        # random monotone tone curve on the windowed intensities: each of `contrast_points` evenly spaced
        # knots moves by up to ±`contrast_curve` (0.1 = ±50 HU for a 500 HU window), so organs brighten or
        # darken against fat differently from scan to scan, as contrast phases do; 0 turns it off
        "contrast_curve": 0.0,
        "contrast_points": 6,
        "probability": 0.8,
    },
}
DEFAULT_ARCH_ARGS = {
    "residual_unet": {"channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2], "num_res_units": 2},
    "transunet3d": {"channels": [16, 32, 64, 128], "hidden_size": 256, "num_layers": 6, "num_heads": 8, "mlp_dim": 1024},
}


# ---- the dataset config -------------------------------------------------------------------------
@dataclass
class Case:
    """One labelled CT: paths, and which label values mean which model classes."""

    id: str
    image: Path
    label: Path
    groups: dict  # source label value (int) -> list of class names
    meta: dict = field(default_factory=dict)

    def read(self) -> tuple:
        """The CT and its label volume, on the geometry the config declares when the header is known to be wrong."""
        volume, label = read_volume(self.image), read_volume(self.label)
        spec = self.meta.get("geometry")
        if spec:
            if label.shape != volume.shape:
                raise SegXAIError(f"case {self.id}: label shape {label.shape} differs from the CT's {volume.shape}; a declared geometry needs both on one grid")
            ijk_to_ras = declared_geometry(spec, f"case {self.id}")
            volume.ijk_to_ras, label.ijk_to_ras = ijk_to_ras, ijk_to_ras.copy()
        return volume, label


#: anatomical letter -> unit vector in LPS (x grows to the patient's left, y to posterior, z to superior)
_LPS_AXES = {"L": (1, 0, 0), "R": (-1, 0, 0), "P": (0, 1, 0), "A": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}


def declared_geometry(spec: dict, what: str) -> np.ndarray:
    """IJK→RAS from ``{"axes": ["S", "P", "L"], "spacing": [1.5, 1, 1]}``: where i, j, k point and their voxel size.

    For data whose header is known to be wrong (a crop shipped with an identity direction, say): the axes
    are read off the anatomy (lungs are superior, the spine posterior, the liver on the patient's right).
    """
    try:
        axes = [a.upper() for a in spec["axes"]]
        spacing = [float(x) for x in spec["spacing"]]
        columns = np.array([_LPS_AXES[a] for a in axes], dtype=np.float64).T
    except (KeyError, TypeError, ValueError) as err:
        raise SegXAIError(f"{what}: geometry needs axes (three of L R P A S I) and spacing (three mm values): {err}") from None
    if len(axes) != 3 or len(spacing) != 3 or abs(np.linalg.det(columns)) != 1 or min(spacing) <= 0:
        raise SegXAIError(f"{what}: geometry axes {axes} must name three different directions and spacing {spacing} three positive sizes")
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = columns @ np.diag(spacing)
    ijk_to_lps[:3, 3] = spec.get("origin", [0.0, 0.0, 0.0])
    return LPS_TO_RAS @ ijk_to_lps


@dataclass
class TrainConfig:
    """Everything ``segxai train`` needs, loaded from a JSON config or built from the command line."""

    name: str
    architecture: str
    classes: list  # class names, background excluded
    cases: list  # Case
    validation: list  # case ids held out of training, measured each epoch
    input: dict = field(default_factory=lambda: dict(DEFAULT_INPUT))
    arch_args: dict = field(default_factory=dict)
    train: dict = field(default_factory=lambda: json.loads(json.dumps(DEFAULT_TRAIN)))
    postprocessing: dict = field(default_factory=dict)
    description: str = ""
    source: str = ""  # the config file, for the card

    @property
    def train_cases(self) -> list:
        return [c for c in self.cases if c.id not in self.validation]

    @property
    def val_cases(self) -> list:
        return [c for c in self.cases if c.id in self.validation]


def _merge(defaults: dict, given: dict) -> dict:
    out = json.loads(json.dumps(defaults))
    for key, value in given.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def recipe_of(settings: dict) -> dict:
    """The training settings that make a recipe: defaults filled in; the step budget, the precision and the seed
    (which run of the recipe it is) left out."""
    return {k: v for k, v in _merge(DEFAULT_TRAIN, settings).items() if k not in ("steps", "precision", "seed")}


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SegXAIError(f"no {what} at {path}") from None
    except json.JSONDecodeError as err:
        raise SegXAIError(f"{what} {path} is not valid JSON ({err})") from None


def load_config(path: str | os.PathLike, data_root: str | os.PathLike | None = None, exclude: tuple = (),
                cases_file: str | os.PathLike | None = None) -> TrainConfig:
    """Read a dataset/training config; case paths are relative to ``data_root`` (default: the config's ``data_root``).

    ``cases_file`` (a JSON with ``cases`` and ``data_root``) replaces the config's cases, and its validation
    split, with another case list: the same recipe run on other patients (cross-validation folds).
    """
    path = Path(path)
    raw = _read_json(path, "training config")
    base = path.parent
    if cases_file:
        listed = _read_json(Path(cases_file), "case list")
        raw = dict(raw, cases=listed.get("cases", []), data_root=listed.get("data_root", "."), validation=[])
        base = Path(cases_file).parent
    try:
        root = Path(data_root) if data_root else (base / raw.get("data_root", ".")).resolve()
        arch = raw.get("architecture", "residual_unet")
        cases = []
        for c in raw["cases"]:
            if c["id"] in exclude:
                continue
            groups = {int(k): list(v) for k, v in c["groups"].items()}
            meta = {k: v for k, v in c.items() if k not in ("image", "label", "groups")}
            cases.append(Case(c["id"], root / c["image"], root / c["label"], groups, meta))
        cfg = TrainConfig(
            name=raw["name"],
            architecture=arch,
            classes=list(raw["classes"]),
            cases=cases,
            validation=[v for v in raw.get("validation", []) if v not in exclude],
            input=_merge(DEFAULT_INPUT, raw.get("input", {})),
            arch_args=_merge(DEFAULT_ARCH_ARGS.get(arch, {}), raw.get("arch_args", {})),
            train=_merge(DEFAULT_TRAIN, raw.get("train", {})),
            postprocessing=raw.get("postprocessing", {}),
            description=raw.get("description", ""),
            source=str(path),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise SegXAIError(f"training config {path}: a field is missing or malformed ({type(err).__name__}: {err}); see configs/ for the format") from None
    validate_config(cfg)
    return cfg


def config_from_folders(images: str, labels: str, classes: list, architecture: str, name: str) -> TrainConfig:
    """``--images DIR --labels DIR``: pair files by name; label value n means the n-th class of ``classes``."""
    image_dir, label_dir = Path(images), Path(labels)
    for d in (image_dir, label_dir):
        if not d.is_dir():
            raise SegXAIError(f"{d} is not a folder; --images and --labels take folders of volumes with matching names")
    label_files = {split_suffix(p.name)[0]: p for p in label_dir.iterdir() if split_suffix(p.name)[1]}
    cases = []
    for image in sorted(image_dir.iterdir()):
        base, suffix = split_suffix(image.name)
        if not suffix and not image.is_dir():
            continue
        label = label_files.get(base) or label_files.get(base.replace("_0000", ""))
        if label is None:
            continue
        groups = {i + 1: [c] for i, c in enumerate(classes)}
        cases.append(Case(base, image, label, groups, {"source": str(image_dir)}))
    if not cases:
        raise SegXAIError(f"no image in {image_dir} has a label with the same name in {label_dir}")
    arch = {"unet": "residual_unet", "transunet": "transunet3d"}.get(architecture, architecture)
    cfg = TrainConfig(name, arch, list(classes), cases, [], arch_args=json.loads(json.dumps(DEFAULT_ARCH_ARGS.get(arch, {}))))
    validate_config(cfg)
    return cfg


def validate_config(cfg: TrainConfig) -> None:
    if cfg.architecture not in DEFAULT_ARCH_ARGS:
        raise SegXAIError(f"unknown architecture {cfg.architecture!r}; use unet (residual_unet) or transunet (transunet3d)")
    known = set(cfg.classes)
    unknown_val = [v for v in cfg.validation if v not in {c.id for c in cfg.cases}]
    if unknown_val:
        raise SegXAIError(f"validation case(s) {unknown_val} are not among the cases {[c.id for c in cfg.cases]}")
    steps = cfg.train.get("steps")
    if not isinstance(steps, int) or steps < 1:
        raise SegXAIError(f"training steps must be a positive whole number, got {steps!r}")
    wants_bf16(cfg.train.get("precision", "auto"), torch.device("cpu"), "training precision")  # fails before any work
    for case in cfg.cases:
        for value, names in case.groups.items():
            unknown = [n for n in names if n not in known]
            if unknown:
                raise SegXAIError(f"case {case.id}: label {value} maps to {unknown}, which are not among the classes {cfg.classes}")
        for p in (case.image, case.label):
            if not p.exists():
                raise SegXAIError(f"case {case.id}: {p} does not exist (is --data-root right?)")
    if not cfg.train_cases:
        raise SegXAIError("no case is left for training after the validation split")


# ---- prepared data on the model grid -------------------------------------------------------------
@dataclass
class PreparedCase:
    """A case on the model grid: normalised image, group index per voxel, and the group→class matrix."""

    id: str
    image: np.ndarray  # float32 (K, J, I)
    groups: np.ndarray  # uint8 (K, J, I), 0 = background group
    membership: np.ndarray  # float32 (G, C): 1 where class c belongs to group g
    group_classes: list  # names per group (group 0 = background + unannotated)
    foreground: np.ndarray  # (N, 3) indices of non-background voxels, for biased crops


def membership_matrix(case: Case, class_names: list) -> tuple:
    """Group→class matrix and the source-value→group lookup for one case."""
    all_classes = ["background"] + list(class_names)
    values = sorted(case.groups)
    member = np.zeros((len(values) + 1, len(all_classes)), dtype=np.float32)
    covered = set()
    for g, value in enumerate(values, start=1):
        for name in case.groups[value]:
            member[g, all_classes.index(name)] = 1.0
            covered.add(name)
    member[0, 0] = 1.0
    for c, name in enumerate(all_classes[1:], start=1):
        if name not in covered:
            member[0, c] = 1.0  # unannotated: it may hide in this case's background
    group_names = ["background+" + "+".join(n for n in all_classes[1:] if n not in covered)] + [
        "+".join(case.groups[v]) for v in values
    ]
    return member, {v: g for g, v in enumerate(values, start=1)}, group_names


def prepare_case(case: Case, class_names: list, pre: Preprocessing) -> PreparedCase:
    volume, label = case.read()
    label = volume.like(labels_on_grid(label, volume.grid))
    member, lookup, names = membership_matrix(case, class_names)
    source = label.array.astype(np.int32)
    grouped = np.zeros(source.shape, dtype=np.uint8)
    for value, g in lookup.items():
        grouped[source == value] = g
    prepared = pre(volume)
    groups = pre.resample_labels(volume.like(grouped), prepared.grid)
    fg = np.argwhere(groups > 0)
    return PreparedCase(case.id, prepared.image.astype(np.float32), groups.astype(np.uint8), member, names, fg)


# ---- sampling and augmentation -------------------------------------------------------------------
def random_patch(case: PreparedCase, patch, rng: np.random.Generator, foreground_fraction: float):
    """A (patch) crop of image and groups; centred on a foreground voxel with ``foreground_fraction``."""
    shape = np.array(case.image.shape)
    patch = np.array(patch)
    if len(case.foreground) and rng.random() < foreground_fraction:
        centre = case.foreground[rng.integers(len(case.foreground))] + rng.integers(-patch // 4, patch // 4 + 1)
    else:
        centre = np.array([rng.integers(0, s) for s in shape])
    start = centre - patch // 2
    image = np.zeros(tuple(patch), dtype=np.float32)  # 0 = air after the window
    groups = np.zeros(tuple(patch), dtype=np.uint8)
    src_lo = np.maximum(start, 0)
    src_hi = np.minimum(start + patch, shape)
    dst_lo = src_lo - start
    dst_hi = dst_lo + (src_hi - src_lo)
    if np.all(src_hi > src_lo):
        s = tuple(slice(a, b) for a, b in zip(src_lo, src_hi))
        d = tuple(slice(a, b) for a, b in zip(dst_lo, dst_hi))
        image[d] = case.image[s]
        groups[d] = case.groups[s]
    return image, groups


def tone_curve(image: np.ndarray, rng: np.random.Generator, jitter: float, points: int) -> np.ndarray:
    """Map windowed intensities (0..1) through a random monotone piecewise-linear curve.

    Knots at evenly spaced input levels move by up to ±``jitter``; a running maximum keeps the curve
    monotone, so tissue order (fat < liver < contrast-filled vessel) survives while the gaps between them change.
    """
    x = np.linspace(0.0, 1.0, max(int(points), 2))
    y = np.maximum.accumulate(x + rng.uniform(-jitter, jitter, x.shape))
    return np.interp(image, x, y, left=y[0], right=y[-1]).astype(np.float32)


class Augmenter:
    """Rotation, scaling (zoom), optional flips, tone curve, intensity shift/scale, gamma contrast, Gaussian noise."""

    def __init__(self, settings: dict, seed: int) -> None:
        from monai.transforms import RandAffined

        self.s = settings
        self.rng = np.random.default_rng(seed + 1)
        rot = [math.radians(d) for d in settings.get("rotate_deg", [0, 0, 0])]
        scale = settings.get("scale", 0.0)
        self.affine = RandAffined(
            keys=["image", "groups"],
            prob=settings.get("probability", 0.8),
            rotate_range=rot,
            scale_range=[scale] * 3,
            mode=["bilinear", "nearest"],
            padding_mode="zeros",
        )
        self.affine.set_random_state(seed)

    def __call__(self, image: np.ndarray, groups: np.ndarray):
        out = self.affine({"image": image[None], "groups": groups[None].astype(np.float32)})
        img = np.asarray(out["image"])[0].astype(np.float32)
        grp = np.asarray(out["groups"])[0].round().astype(np.uint8)
        r = self.rng
        for axis in self.s.get("flip_axes", []):
            if r.random() < 0.5:
                img, grp = np.flip(img, axis).copy(), np.flip(grp, axis).copy()
        if self.s.get("contrast_curve", 0) > 0 and r.random() < 0.5:
            img = tone_curve(img, r, self.s["contrast_curve"], self.s.get("contrast_points", 6))
        if r.random() < 0.5:
            img = img * (1 + r.uniform(-1, 1) * self.s.get("intensity_scale", 0)) + r.uniform(-1, 1) * self.s.get("intensity_shift", 0)
        if r.random() < 0.3:
            lo, hi = self.s.get("gamma", [1, 1])
            img = np.clip(img, 0, None) ** r.uniform(lo, hi)
        if r.random() < 0.3:
            img = img + r.normal(0, self.s.get("noise_std", 0), img.shape).astype(np.float32)
        return img.astype(np.float32), grp


# ---- the loss -----------------------------------------------------------------------------------
def marginal_dice_ce(logits: torch.Tensor, groups: torch.Tensor, membership: torch.Tensor, n_groups: torch.Tensor) -> torch.Tensor:
    """Dice + cross-entropy on group probabilities.

    logits (B, C, ...) ; groups (B, ...) long group index ; membership (B, Gmax, C) ; n_groups (B,) groups used.
    Group probabilities q_g = Σ_c membership[g, c]·softmax(logits)_c; CE = −log q_{label}; soft Dice over each
    sample's foreground groups (background group excluded), averaged.
    """
    p = torch.softmax(logits.float(), dim=1)
    q = torch.einsum("bgc,bc...->bg...", membership, p).clamp_min(1e-6)
    ce = F.nll_loss(torch.log(q), groups)
    onehot = F.one_hot(groups, q.shape[1]).movedim(-1, 1).float()
    dims = tuple(range(2, q.ndim))
    inter = (q * onehot).sum(dims)
    denom = q.sum(dims) + onehot.sum(dims)
    dice = 1 - (2 * inter + 1.0) / (denom + 1.0)  # (B, G)
    valid = torch.arange(q.shape[1], device=q.device)[None] < n_groups[:, None]
    valid[:, 0] = False
    dice_loss = (dice * valid).sum() / valid.sum().clamp_min(1)
    return ce + dice_loss


# ---- validation ---------------------------------------------------------------------------------
def group_dice(pred_classes: np.ndarray, case: PreparedCase) -> dict:
    """Dice per annotated group, predicted classes mapped to the case's groups."""
    class_to_group = case.membership.argmax(axis=0)  # each class's group in this case
    pred_groups = class_to_group[pred_classes]
    out = {}
    for g in range(1, case.membership.shape[0]):
        a, b = pred_groups == g, case.groups == g
        denom = a.sum() + b.sum()
        out[case.group_classes[g]] = float(2 * np.logical_and(a, b).sum() / denom) if denom else 1.0
    return out


def validate(network, cases: list, patch, overlap: float, device) -> dict:
    network.eval()
    results = {}
    for case in cases:
        logits = sliding_window_logits(network, case.image, patch, overlap, device)
        results[case.id] = group_dice(logits.argmax(0).numpy().astype(np.int64), case)
    network.to(device)  # an out-of-memory fallback may have moved it to the CPU
    network.train()
    return results


# ---- the loop -----------------------------------------------------------------------------------
def make_card(cfg: TrainConfig) -> ModelCard:
    classes = [ClassInfo(0, "background", [0, 0, 0], {})] + [ClassInfo.known(i + 1, n) for i, n in enumerate(cfg.classes)]
    inp = cfg.input
    return ModelCard(
        name=cfg.name,
        architecture=cfg.architecture,
        classes=classes,
        spacing=list(inp["spacing"]),
        window=list(inp["window"]),
        patch=list(inp["patch"]),
        arch_args=cfg.arch_args,
        orientation=inp["orientation"],
        overlap=inp["overlap"],
        postprocessing=cfg.postprocessing,
        description=cfg.description,
    )


def train(
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    device: torch.device,
    log: Callable[[str], None] = print,
    cancel: Optional[CancelToken] = None,
    command: str = "",
) -> ModelCard:
    """Train ``cfg`` and write ``model.safetensors`` + ``card.json`` (+ per-epoch checkpoints) to ``out_dir``."""
    t = cfg.train
    seed = int(t["seed"])
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    card = make_card(cfg)
    pre = Preprocessing(card.spacing, card.window, card.orientation)
    started = time.time()
    log(f"preparing {len(cfg.cases)} case(s) on the model grid ({card.spacing} mm)")
    names = [c.name for c in card.foreground]
    train_cases = [prepare_case(c, names, pre) for c in cfg.train_cases]
    val_cases = [prepare_case(c, names, pre) for c in cfg.val_cases]
    network = build_network(card).to(device)
    network.train()
    opt = torch.optim.AdamW(network.parameters(), lr=t["lr"], weight_decay=t["weight_decay"])
    steps = int(t["steps"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=t["lr"], total_steps=steps, pct_start=0.05)
    augment = Augmenter(t["augment"], seed)
    bf16 = wants_bf16(t.get("precision", "auto"), device, "training precision")
    log(f"training in {'bf16 autocast' if bf16 else 'fp32'} on {device}")
    gmax = max(c.membership.shape[0] for c in train_cases)
    history = []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    running = 0.0
    for step in range(1, steps + 1):
        if cancel is not None:
            cancel.check()
        imgs, grps, mems, ngs = [], [], [], []
        for _ in range(int(t["batch_size"])):
            case = train_cases[rng.integers(len(train_cases))]
            img, grp = augment(*random_patch(case, card.patch, rng, t["foreground_fraction"]))
            m = np.zeros((gmax, card.num_classes), dtype=np.float32)
            m[: case.membership.shape[0]] = case.membership
            imgs.append(img), grps.append(grp), mems.append(m), ngs.append(case.membership.shape[0])
        x = torch.from_numpy(np.stack(imgs))[:, None].to(device)
        y = torch.from_numpy(np.stack(grps)).long().to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = network(x)
        loss = marginal_dice_ce(logits, y, torch.from_numpy(np.stack(mems)).to(device), torch.tensor(ngs, device=device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running += loss.item()
        if step % int(t["steps_per_epoch"]) == 0 or step == steps:
            epoch = math.ceil(step / int(t["steps_per_epoch"]))
            n = step - (epoch - 1) * int(t["steps_per_epoch"])
            entry = {"epoch": epoch, "step": step, "loss": round(running / max(n, 1), 4), "minutes": round((time.time() - started) / 60, 1)}
            running = 0.0
            if val_cases:
                entry["val_dice"] = validate(network, val_cases, card.patch, card.overlap, device)
            history.append(entry)
            log(json.dumps(entry))
            save_model(network, _with_training(card, cfg, history, started, device, command, final=False), out_dir / "checkpoint")
    card = _with_training(card, cfg, history, started, device, command, final=True)
    save_model(network, card, out_dir)
    log(f"saved {out_dir / card.weights} ({(out_dir / card.weights).stat().st_size / 2**20:.1f} MiB) and card.json")
    return card


def _with_training(card: ModelCard, cfg: TrainConfig, history, started, device, command, final) -> ModelCard:
    card.training = {
        "config": cfg.source,
        "command": command,
        "seed": cfg.train["seed"],
        "device": str(device),
        "precision": "bf16 autocast" if wants_bf16(cfg.train.get("precision", "auto"), device) else "fp32",
        "torch_threads": torch.get_num_threads(),
        "minutes": round((time.time() - started) / 60, 1),
        "finished": final,
        "settings": cfg.train,
        "cases": [dict(id=c.id, **{k: v for k, v in c.meta.items() if k != "id"}) for c in cfg.train_cases],
        "validation_cases": [dict(id=c.id, **{k: v for k, v in c.meta.items() if k != "id"}) for c in cfg.val_cases],
        "checkpoint": "the last step (no checkpoint was picked by validation, so validation figures are not tuned on)",
        "history": history,
    }
    return card
