"""Explanation cost against its floor and against the peers users would otherwise pick, in one run.

    python bench/run.py --quick --device cpu          # the bundled sample, both models, IG with 8 steps (~5 min, 2 cores)
    python bench/run.py --device cpu                  # + a 128³ volume, IG with 32 steps
    python bench/run.py --device cuda                 # 256²×192, 512²×300, 512²×1000 inputs

For each bundled architecture and volume, on the same model, volume and target (the liver class summed
over the predicted liver): ``seg_s`` (the whole segmentation pipeline), ``fwd_bwd_s`` (one forward and
backward of the target through the blended sliding windows: the gradient floor), our ``gradcam_s``,
``hirescam_s``, ``gradcampp_s``, ``ig_s``, ``lrp_s`` (each with the segmentation given, maps mapped back to
the input grid), and the peers: captum ``IntegratedGradients`` on the same blended sliding-window output
(``captum_ig_s``, same steps and baseline; ``internal_batch_size`` picked from 1, 2, 4 by a 4-step trial of
each outside ``--quick``), and whole-volume Grad-CAMs as
users run them — captum ``LayerGradCam``, M3d-CAM (``medcam``) and MONAI ``GradCAM``. A peer that cannot
run (not installed, out of memory, a fixed-size model) is recorded with its error. Peak memory per figure:
process RSS sampled during the call on CPU, ``torch.cuda.max_memory_allocated`` on GPU. Where bf16 is fast (a GPU,
a CPU with AMX / AVX512-BF16) the CAMs run under bf16 autocast (their default there), and the floor, our IG
and captum's IG are also run in bf16 (``fwd_bwd_bf16_s``, ``ig_bf16_s``, ``captum_ig_bf16_s``) to show what
bf16 buys and what it costs in completeness error.

One JSON object per (model, volume) on stdout, appended to ``bench/results/<device>.jsonl``; ratios last.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

CPU_SIZES = {"sample": None, "128^3": ((128, 128, 128), (3.0, 3.0, 3.0))}
GPU_SIZES = {
    "256x256x192": ((256, 256, 192), (1.5, 1.5, 2.0)),
    "512x512x300": ((512, 512, 300), (0.8, 0.8, 1.0)),
    "512x512x1000": ((512, 512, 1000), (0.8, 0.8, 1.0)),
}
METHODS = ("gradcam", "hirescam", "gradcampp", "ig", "lrp")


# ---- measuring --------------------------------------------------------------------------------------
def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _release_freed_memory() -> None:
    """Hand memory that earlier figures freed back to the OS (glibc keeps it otherwise), so that each CPU
    figure's peak RSS is its own and not the high-water mark of whatever ran before it."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: peaks may carry over, as the docstring of Measure says
        pass


class Measure:
    """Wall time and peak memory of a block: sampled RSS on CPU (after releasing freed memory; it still counts
    the model and volume already loaded), max allocated on CUDA."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self):
        if self.device.type == "cpu":
            _release_freed_memory()
        self.peak, self._stop = _rss_mib(), threading.Event()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            def sample():
                while not self._stop.wait(0.005):
                    self.peak = max(self.peak, _rss_mib())
            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.t0
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss_mib())
        return False


def timed(record: dict, key: str, device, fn):
    """Run ``fn``, store ``<key>_s`` and ``<key>_peak_mib``; a failure is stored as ``<key>_error``."""
    try:
        with Measure(device) as m:
            out = fn()
        record[f"{key}_s"] = round(m.seconds, 3)
        record[f"{key}_peak_mib"] = round(m.peak, 1)
        return out
    except Exception as err:  # a peer that cannot run is a figure too
        record[f"{key}_error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
        if os.environ.get("SEGXAI_BENCH_TRACE"):
            traceback.print_exc()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return None


# ---- volumes ----------------------------------------------------------------------------------------
def bench_volume(name: str, spec, source):
    """The bundled sample, or a real CT resampled onto a ``shape`` grid of ``spacing`` mm (air outside)."""
    import SimpleITK as sitk

    from SegXAILib.volume import Volume, read_volume

    if spec is None:
        return read_volume(source)
    shape, spacing = spec
    image = read_volume(source).to_sitk()
    centre = image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()])
    ref = sitk.Image([int(s) for s in shape], sitk.sitkFloat32)
    ref.SetSpacing(spacing)
    ref.SetOrigin([c - (n - 1) / 2 * s for c, n, s in zip(centre, shape, spacing)])
    out = sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), ref, sitk.Transform(), sitk.sitkLinear, -1024.0)
    return Volume.from_sitk(sitk.Cast(out, sitk.sitkInt16))


# ---- the floor and the peers ------------------------------------------------------------------------
def _gradient_explainer():
    """An explainer that only takes the input gradient of the target: one forward + backward per window."""
    from SegXAILib.explainers.base import Attribution, Explainer, target_score

    class Gradient(Explainer):
        name = "gradient"

        def attribute(self, network, inputs, class_index, weights, baseline=None):
            x = inputs.detach().requires_grad_(True)
            with torch.enable_grad():
                (g,) = torch.autograd.grad(target_score(network(x), class_index, weights).sum(), x)
            return Attribution(g[:, 0], {})

    return Gradient()


def blended_score(network, card, class_index: int, region: torch.Tensor, device):
    """captum's forward_func: the batch's class logit summed over the region, through MONAI's blended windows."""
    from monai.inferers import sliding_window_inference

    def forward(x):
        logits = sliding_window_inference(x, tuple(card.patch), 2, network, card.overlap, mode="gaussian",
                                          sw_device=device, device=device)
        return (logits[:, class_index] * region).sum(dim=(1, 2, 3))

    return forward


def whole_volume(image: np.ndarray, region: np.ndarray, multiple: int = 16):
    """Image and region padded (air / False) to a multiple of ``multiple`` for a whole-volume forward."""
    pads = [(0, (-s) % multiple) for s in image.shape]
    return np.pad(image, pads, constant_values=float(image.min())), np.pad(region, pads)


class _RegionScore(torch.nn.Module):
    """Wraps a segmentation net as a one-output 'classifier': the class logit summed over the region."""

    def __init__(self, net, class_index, region):
        super().__init__()
        self.net, self.class_index, self.region = net, class_index, region

    def forward(self, x):
        return (self.net(x)[:, self.class_index] * self.region).sum(dim=(1, 2, 3))[:, None]


# ---- one (model, volume) ----------------------------------------------------------------------------
def run_case(model_name: str, volume_name: str, volume, device, steps: int, tune: bool, methods=METHODS) -> dict:
    from SegXAILib.explainers import default_layer
    from SegXAILib.explainers.ig import make_baseline
    from SegXAILib.explainers.tiling import explain_tiled
    from SegXAILib.inference import fast_bf16
    from SegXAILib.explaining import explain_volume
    from SegXAILib.models.store import load_model
    from SegXAILib.pipeline import segment
    from SegXAILib.targets import make_target, parse_region

    model = load_model(model_name)
    net, card = model.network.eval(), model.card
    rec = {"model": model_name, "architecture": card.architecture, "volume": volume_name,
           "input_shape_ijk": list(volume.shape[::-1]), "device": str(device), "ig_steps": steps}
    with torch.no_grad():  # warm-up (allocator, kernels) outside every timing
        net.to(device)(torch.zeros(1, 1, *card.patch, device=device))
    seg = timed(rec, "seg", device, lambda: segment(volume, model, device))
    if seg is None:
        return rec
    pre = seg.preprocessed
    rec["model_grid_kji"] = list(pre.image.shape)
    predicted = torch.argmax(seg.logits, dim=0).numpy()
    target = make_target(card, "liver", parse_region("predicted"), pre, predicted)
    cls, region = target.class_value, target.region
    rec["target_voxels"] = int(region.sum())
    base = make_baseline(pre.image, "blur", model.preprocessing.window)
    layer = default_layer(card.architecture, net)
    rec["layer"] = layer

    # the floor: one forward + backward through the windows, in fp32 and, where bf16 is fast, in bf16 (the CAMs'
    # default there; IG's with --precision bf16)
    bf16 = fast_bf16(device)
    for suffix, precision in [("", "fp32")] + ([("_bf16", "bf16")] if bf16 else []):
        timed(rec, f"fwd_bwd{suffix}", device, lambda p=precision: explain_tiled(
            _gradient_explainer(), net, pre.image, cls, region, card.patch, card.overlap, device, precision=p))
    runs = [(m, m, "auto") for m in methods] + ([("ig_bf16", "ig", "bf16")] if bf16 and "ig" in methods else [])
    for key, method, precision in runs:
        out = timed(rec, key, device, lambda m=method, p=precision: explain_volume(
            volume, model, [m], target="liver", steps=steps, device=device, segmentation=seg, precision=p))
        if out is None:
            continue
        rec[f"{key}_precision"] = out.methods[method].params["precision"]
        if method == "ig":
            rec[f"{key}_completeness_error"] = out.methods["ig"].checks.get("completeness_error")
        if method == "lrp":
            rec["lrp_conservation_error"] = out.methods["lrp"].checks.get("conservation_error")

    # captum IG on the very same function (blended windows), same steps and baseline
    try:
        from captum.attr import IntegratedGradients
    except ImportError as err:
        rec["captum_ig_error"] = f"ImportError: {err}"
    else:
        x = torch.from_numpy(pre.image.astype(np.float32))[None, None].to(device)
        b = torch.from_numpy(base.astype(np.float32))[None, None].to(device)
        r = torch.from_numpy(region)[None].to(device)
        forward = blended_score(net, card, cls, r, device)
        ig = IntegratedGradients(forward)
        ibs = 2
        if tune:  # internal_batch_size picked by a 4-step trial of each (time per step), then one full run
            trial = {}
            for candidate in (1, 2, 4):
                key = f"captum_ig_trial_ibs{candidate}"
                if timed(rec, key, device, lambda c=candidate: ig.attribute(x, baselines=b, n_steps=4, internal_batch_size=c)) is None:
                    break  # out of memory: a larger batch will not fit either
                trial[candidate] = rec[f"{key}_s"]
            ibs = min(trial, key=trial.get) if trial else 1
        res = timed(rec, "captum_ig", device, lambda: ig.attribute(x, baselines=b, n_steps=steps, internal_batch_size=ibs,
                                                                  return_convergence_delta=True))
        rec["captum_ig_internal_batch_size"] = ibs
        if res is not None:
            with torch.no_grad():
                delta_f = float(forward(x) - forward(b))
            rec["captum_ig_completeness_error"] = abs(float(res[1])) / abs(delta_f) if delta_f else None
        if "ig_bf16_s" in rec:  # the same precision for captum: its IG under bf16 autocast
            def captum_bf16():
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    return ig.attribute(x, baselines=b, n_steps=steps, internal_batch_size=ibs, return_convergence_delta=True)
            res = timed(rec, "captum_ig_bf16", device, captum_bf16)
            if res is not None and delta_f:
                rec["captum_ig_bf16_completeness_error"] = abs(float(res[1])) / abs(delta_f)
        del x, b, r

    # whole-volume Grad-CAMs, as the peers are used (no windows; fixed-size models cannot run)
    image, mask = whole_volume(pre.image.astype(np.float32), region)
    x = torch.from_numpy(image)[None, None].to(device)
    r = torch.from_numpy(mask)[None].to(device)
    layer_module = dict(net.named_modules())[layer]
    try:
        from captum.attr import LayerGradCam

        scorer = _RegionScore(net, cls, r)
        timed(rec, "captum_layergradcam", device, lambda: LayerGradCam(scorer, layer_module).attribute(x, target=0))
    except ImportError as err:
        rec["captum_layergradcam_error"] = f"ImportError: {err}"
    try:
        from monai.visualize import GradCAM

        cam = GradCAM(nn_module=_RegionScore(net, cls, r), target_layers=f"net.{layer}")
        timed(rec, "monai_gradcam", device, lambda: cam(x, class_idx=0))
    except ImportError as err:
        rec["monai_gradcam_error"] = f"ImportError: {err}"
    try:
        from medcam import medcam

        injected = medcam.inject(copy.deepcopy(net), backend="gcam", layer=layer, label=lambda out: _one_class(out, cls, r),
                                 return_attention=True, save_maps=False)
        timed(rec, "medcam_gradcam", device, lambda: injected(x))
    except ImportError as err:
        rec["medcam_gradcam_error"] = f"ImportError: {err} (pip install --no-deps medcam)"
    except Exception as err:
        rec["medcam_gradcam_error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    del x, r
    ratios(rec)
    return rec


def _one_class(out, cls, region):
    mask = torch.zeros_like(out)
    mask[:, cls] = region
    return mask


def ratios(rec: dict) -> None:
    """What the targets compare: Grad-CAM against its floor, IG against captum, Grad-CAM against the peers."""
    r = {}
    floor = {"fp32": rec.get("fwd_bwd_s"), "bf16": rec.get("fwd_bwd_bf16_s")}  # each method against its precision's floor
    cam_floor = floor.get(rec.get("gradcam_precision", "fp32"))
    if "seg_s" in rec and cam_floor and "gradcam_s" in rec:
        r["segment_plus_gradcam_over_floor"] = (rec["seg_s"] + rec["gradcam_s"]) / (rec["seg_s"] + cam_floor)
        r["segment_plus_gradcam_s"] = rec["seg_s"] + rec["gradcam_s"]
    for key, precision in (("ig", rec.get("ig_precision", "fp32")), ("ig_bf16", "bf16")):
        if f"{key}_s" in rec and floor.get(precision):
            r[f"{key}_over_steps_times_floor"] = rec[f"{key}_s"] / (rec["ig_steps"] * floor[precision])
    if "ig_s" in rec and "captum_ig_s" in rec:
        r["captum_ig_over_ig"] = rec["captum_ig_s"] / rec["ig_s"]
    if "ig_bf16_s" in rec and "captum_ig_bf16_s" in rec:
        r["captum_ig_bf16_over_ig_bf16"] = rec["captum_ig_bf16_s"] / rec["ig_bf16_s"]
    for peer in ("captum_layergradcam", "monai_gradcam", "medcam_gradcam"):
        if f"{peer}_s" in rec and "gradcam_s" in rec:
            r[f"{peer}_over_gradcam"] = rec[f"{peer}_s"] / rec["gradcam_s"]
            r[f"{peer}_peak_over_gradcam_peak"] = rec[f"{peer}_peak_mib"] / rec["gradcam_peak_mib"]
    rec["ratios"] = {k: round(v, 3) for k, v in r.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="the bundled sample only and IG with 8 steps (about 5 minutes on 2 CPU cores)")
    parser.add_argument("--steps", type=int, help="IG steps (default 32; 8 with --quick)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--models", default=None, help="comma-separated bundled models (default: all)")
    parser.add_argument("--sizes", default=None, help="comma-separated volume names to run (e.g. sample,128^3)")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"), help="the team's data (for the larger volumes)")
    parser.add_argument("--methods", default=",".join(METHODS), help="our methods to time (default: all)")
    parser.add_argument("--no-save", action="store_true", help="do not append to bench/results/")
    args = parser.parse_args()
    import warnings

    warnings.filterwarnings("ignore")
    from SegXAILib.inference import choose_device
    from SegXAILib.models.store import bundled_models, resources_dir

    if args.threads:
        torch.set_num_threads(args.threads)
    device = choose_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    steps = args.steps or (8 if args.quick else 32)
    sample = resources_dir() / "Samples" / "ct_totalseg_A.nii.gz"
    larger = Path(args.data) / "ircad_1.17" / "ct.nii.gz"
    sizes = dict(CPU_SIZES if device.type == "cpu" else GPU_SIZES)
    if args.quick:
        sizes = {"sample": None} if device.type == "cpu" else {"256x256x192": GPU_SIZES["256x256x192"]}
    machine = {"machine": platform.node(), "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
               "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
               "quick": args.quick, "date": time.strftime("%Y-%m-%d %H:%M")}
    out_path = ROOT / "bench" / "results" / f"{'cuda-' + machine['gpu'].replace(' ', '_') if machine['gpu'] else 'cpu'}.jsonl"
    if args.sizes:
        sizes = {k: v for k, v in dict(CPU_SIZES, **GPU_SIZES).items() if k in args.sizes.split(",")}
    names = args.models.split(",") if args.models else bundled_models()
    for volume_name, spec in sizes.items():
        source = sample if spec is None or not larger.exists() else larger
        volume = bench_volume(volume_name, spec, source)
        for name in names:
            rec = dict(run_case(name, volume_name, volume, device, steps, tune=not args.quick,
                                methods=[m for m in args.methods.split(",") if m in METHODS]), **machine)
            line = json.dumps(rec)
            print(line, flush=True)
            print("  ratios:", json.dumps(rec.get("ratios", {})), file=sys.stderr, flush=True)
            if not args.no_save:
                out_path.parent.mkdir(parents=True, exist_ok=True)
                with open(out_path, "a") as f:
                    f.write(line + "\n")


if __name__ == "__main__":
    main()
