"""Drive the cases: ``local`` (one model load, a progress bar over cases) or ``ray`` (one actor per GPU or CPU slot
that loads the model once; reading and resampling run in separate tasks so they overlap with inference). Both call the same
per-case functions, and both write the manifest and the tables from this (the driver) process only.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from ..errors import SegXAIError
from .manifest import Manifest, case_key, model_fingerprint
from .per_case import BatchParams, one_line, process_case, read_case, remove_leftovers, run_case
from .table import write_results

RAY_HINT = "the Ray engine needs Ray: pip install 'segxai[ray]' (or pip install ray==2.60.0), or use --engine local"


def plan(cases: list, out_dir: Path, params: BatchParams, model) -> tuple:
    """(pending cases with their keys, skipped names, records of cases that cannot even be hashed)."""
    manifest, fingerprint = Manifest(out_dir), model_fingerprint(model)
    pending, skipped, unreadable = [], [], []
    for spec in cases:
        remove_leftovers(out_dir, spec.name)
        try:
            key = case_key(spec, params.key(), fingerprint)
        except OSError as err:
            unreadable.append({"case": spec.name, "image": spec.image, "status": "failed", "rows": [], "seconds": {},
                               "error": f"cannot read {getattr(err, 'filename', None) or spec.image}: "
                                        f"{err.strerror or 'no such file'}; check the path"})
            continue
        if manifest.is_done(spec.name, key):
            skipped.append(spec.name)
        else:
            pending.append((spec, key))
    return pending, skipped, unreadable


def finish(record: dict, key: Optional[dict], manifest: Manifest) -> dict:
    """Stamp a case's record with its key and time, and write it to the manifest (after its outputs are in place)."""
    record["key"] = key
    record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    record["worker_pid"] = record.get("worker_pid", os.getpid())
    manifest.write(record)
    return record


def run_local(pending: list, model, params: BatchParams, out_dir: Path, manifest: Manifest,
              log: Callable[[str], None]) -> list:
    """One process, one model: read → segment → explain → write per case, a progress bar over the cases."""
    import torch
    from tqdm import tqdm

    threads = torch.get_num_threads()
    if params.threads:
        torch.set_num_threads(params.threads)
    done = []
    bar = tqdm(pending, desc="cases", unit="case", file=sys.stderr,
               disable=not sys.stderr.isatty() and os.environ.get("SEGXAI_PROGRESS") != "1")
    try:
        for spec, key in bar:
            bar.set_postfix_str(spec.name)
            record = finish(run_case(spec, model, params, out_dir), key, manifest)
            log(_line(record))
            done.append(record)
    finally:
        bar.close()
        torch.set_num_threads(threads)  # a library call leaves the caller's setting as it was
    return done


def _line(record: dict) -> str:
    if record["status"] == "done":
        return f"{record['case']}: done ({sum(record['seconds'].values()):.1f} s)"
    return f"{record['case']}: failed: {record['error']}"


# ---- Ray ----------------------------------------------------------------------------------------
def import_ray():
    try:
        import ray
    except ImportError:
        raise SegXAIError(RAY_HINT) from None
    return ray


def _fault_env() -> dict:
    """SegXAI's variables (test hooks, progress) and the thread limits, passed on to Ray's workers."""
    return {k: v for k, v in os.environ.items() if k.startswith("SEGXAI_") or k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}


def run_ray(pending: list, model_name, params: BatchParams, out_dir: Path, manifest: Manifest,
            log: Callable[[str], None], address: Optional[str] = None, workers: Optional[int] = None,
            timing: Optional[dict] = None, preprocessing=None) -> list:
    """One actor per GPU (or CPU slot) loading the model once; a task per case reading and pre-processing (resampling)
    its CT with ``preprocessing`` (the model's, from the driver's load) while the actors infer, feeding them.

    An actor that dies (a killed worker) is restarted once and its case retried; a case whose actor dies twice
    is recorded as failed. ``timing['startup']`` receives the seconds until every worker had its model.
    """
    timing = {} if timing is None else timing
    ray = import_ray()
    t0 = time.perf_counter()
    started = not ray.is_initialized()
    if started:
        env = {"env_vars": _fault_env()}
        if address:
            ray.init(address=address, runtime_env=env, log_to_driver=False)
        else:
            ray.init(num_cpus=max(workers or os.cpu_count() or 1, 1),
                     include_dashboard=False, runtime_env=env, log_to_driver=False)
    try:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        slots = workers or (gpus if gpus else max(int(resources.get("CPU", 1)), 1))
        per_actor = {"num_gpus": 1, "num_cpus": 0} if gpus else {"num_cpus": 1}
        worker_class = ray.remote(max_restarts=1, max_task_retries=1, **per_actor)(CaseWorker)
        threads = params.threads or 1
        actors = [worker_class.remote(model_name, params, str(out_dir), threads) for _ in range(slots)]
        ray.get([a.ready.remote() for a in actors])  # every worker has loaded the model
        timing["startup"] = time.perf_counter() - t0
        preprocessing = ray.put(preprocessing)  # read tasks resample, workers infer
        reader = ray.remote(num_cpus=0)(read_case)
        idle, busy, queue, done = list(actors), {}, list(pending), []
        while queue or busy:
            while idle and queue:  # the next case's read is already running while an actor infers
                spec, key = queue.pop(0)
                actor = idle.pop()
                busy[actor.process.remote(reader.remote(spec, preprocessing))] = (actor, spec, key)
            ready, _ = ray.wait(list(busy), num_returns=1)
            actor, spec, key = busy.pop(ready[0])
            try:
                record = ray.get(ready[0])
            except Exception as err:  # the actor died twice, or Ray failed: this case fails, the others go on
                record = {"case": spec.name, "image": spec.image, "status": "failed", "rows": [], "seconds": {},
                          "error": f"the worker died ({one_line(err)[:160]})"}
                actor = worker_class.remote(model_name, params, str(out_dir), threads)
            done.append(finish(record, key, manifest))
            log(_line(record))
            idle.append(actor)
        for actor in idle:  # free their slots at once (a session the caller started stays up)
            ray.kill(actor)
        return done
    finally:
        if started:
            ray.shutdown()


class CaseWorker:
    """A Ray actor: loads the model once, then processes read cases with the shared per-case function."""

    def __init__(self, model_name, params: BatchParams, out_dir: str, threads: int) -> None:
        import torch

        from ..models import load_model

        torch.set_num_threads(threads)
        self.model, self.params, self.out_dir = load_model(model_name, "cpu"), params, Path(out_dir)

    def ready(self) -> bool:
        return True

    def process(self, loaded) -> dict:
        record = process_case(loaded, self.model, self.params, self.out_dir)
        record["worker_pid"] = os.getpid()
        return record


# ---- the front -----------------------------------------------------------------------------------
def run_batch(cases: list, out_dir: str | os.PathLike, params: BatchParams, model_name=None, engine: str = "local",
              address: Optional[str] = None, workers: Optional[int] = None, log: Callable[[str], None] = print,
              all_cases: Optional[list] = None) -> dict:
    """Run every case not already done with these inputs, model and parameters; then rebuild the tables.

    ``cases`` is what this process runs (a ``--part`` shard or all); ``all_cases`` what the tables cover
    (default: ``cases``). Returns counts and the files written.
    """
    from ..models import load_model

    if engine not in ("local", "ray"):
        raise SegXAIError(f"unknown engine {engine!r}; use local or ray")
    if engine == "ray":
        import_ray()  # one line naming what to install, before any work
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    model = load_model(model_name, "cpu")
    timing = {"model_load": time.perf_counter() - t}
    if params.target:
        model.card.class_named(params.target)  # a wrong --target fails before any case
    manifest = Manifest(out_dir)
    t = time.perf_counter()
    pending, skipped, unreadable = plan(cases, out_dir, params, model)
    timing["plan"] = time.perf_counter() - t  # hashing the inputs
    for record in unreadable:
        finish(record, None, manifest)
        log(_line(record))
    if skipped:
        log(f"skipping {len(skipped)} case(s) already done with these inputs, model and parameters")
    t = time.perf_counter()
    if not pending:
        records = []  # nothing to do: no Ray start-up either
    elif engine == "local":
        records = run_local(pending, model, params, out_dir, manifest, log)
    else:
        records = run_ray(pending, model_name, params, out_dir, manifest, log, address, workers, timing,
                          model.preprocessing)
    seconds = time.perf_counter() - t
    t = time.perf_counter()
    for spec in cases:
        remove_leftovers(out_dir, spec.name)
    everything = [manifest.read(c.name) for c in (all_cases or cases)]
    everything = [r for r in everything if r]
    files = write_results(everything, out_dir, len(skipped))
    timing["tables"] = time.perf_counter() - t
    return {"timing": timing, "ran": len(records), "skipped": len(skipped), "failed": sum(r["status"] != "done" for r in everything),
            "done": sum(r["status"] == "done" for r in everything), "seconds": seconds, "records": records,
            "files": files}
