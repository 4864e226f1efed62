"""segxai batch throughput: cases per minute with the local and the Ray engine on the same cases, the per-case
overhead Ray adds, and where each case's time goes (read / pre-process / segment / explain / write).

    OMP_NUM_THREADS=1 python bench/batch.py [--cases configs/cases/all-patients.json] [--model segxai-resunet-3mm]
        [--methods hirescam] [--scores localisation] [--workers 2] [--engines local,ray]

Each engine runs into a fresh folder (nothing skipped). Local uses one process with --threads workers×1 torch
threads; Ray uses --workers actors with one thread each, so both use the same cores. The per-case overhead is
(wall time × workers − the workers' time inside the per-case stages) / cases: start-up, hashing the inputs,
scheduling, moving volumes through the object store, the tables and idle slots, per case; the same after Ray's
start-up (ray.init and every worker loading the model, reported apart) is what Ray adds per case once running. Appends one JSON line per engine to
bench/results/batch.jsonl.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
STAGES = ("read", "preprocess", "segment", "explain", "write", "evaluate")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default=str(ROOT / "configs" / "cases" / "all-patients.json"))
    parser.add_argument("--model", default="segxai-resunet-3mm")
    parser.add_argument("--methods", default="hirescam")
    parser.add_argument("--scores", default="localisation")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--engines", default="local,ray")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "batch.jsonl"))
    args = parser.parse_args()

    from SegXAILib.batch.cases import read_cases
    from SegXAILib.batch.engines import run_batch
    from SegXAILib.batch.per_case import BatchParams

    cases = read_cases(args.cases)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    for engine in args.engines.split(","):
        threads = args.workers if engine == "local" else 1
        params = BatchParams(methods=tuple(args.methods.split(",")), scores=tuple(args.scores.split(",")),
                             device="cpu", threads=threads)
        with tempfile.TemporaryDirectory() as out:
            t = time.perf_counter()
            result = run_batch(cases, out, params, args.model, engine, workers=args.workers if engine == "ray" else None,
                               log=lambda line: print(f"  {engine}: {line}", file=sys.stderr))
            wall = time.perf_counter() - t
        records = result["records"]
        done = [r for r in records if r["status"] == "done"]
        stages = {s: round(sum(r["seconds"].get(s, 0.0) for r in done), 2) for s in STAGES}
        busy = sum(stages.values())
        slots = args.workers if engine == "ray" else 1
        timing = {k: round(v, 2) for k, v in result["timing"].items()}
        startup = timing.get("startup", 0.0)  # Ray: init + workers loading the model
        row = {"bench": "batch", "engine": engine, "model": args.model, "methods": args.methods, "scores": args.scores,
               "cases": len(cases), "done": len(done), "failed": len(records) - len(done), "workers": slots,
               "torch_threads_per_worker": threads, "wall_s": round(wall, 2),
               "cases_per_minute": round(60 * len(done) / wall, 3) if wall else None,
               "stage_seconds_total": stages,
               "stage_share": {s: round(v / busy, 3) for s, v in stages.items()} if busy else {},
               "per_case_seconds": {r["case"]: round(sum(r["seconds"].values()), 2) for r in done},
               "driver_seconds": timing,
               "overhead_per_case_s": round((wall * slots - busy) / max(len(done), 1), 2),
               "overhead_per_case_after_startup_s": round(((wall - startup) * slots - busy) / max(len(done), 1), 2),
               "cpu_count": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
               "machine": platform.machine(), "commit": commit, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "case_source": args.cases}
        print(json.dumps(row))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
