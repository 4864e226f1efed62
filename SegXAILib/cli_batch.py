"""``segxai batch CASES -o OUT``: argument parsing and messages only; the work is :mod:`SegXAILib.batch`."""
from __future__ import annotations

import argparse


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``batch`` sub-command to the ``segxai`` parser."""
    from .explainers import METHODS
    from .explainers.ig import BASELINES
    from .quality import DEFAULT_GROUPS, GROUPS

    p = subparsers.add_parser("batch", help="segment, explain and score a cohort: OUT/<case>/ as segxai explain writes "
                              "it, OUT/results.csv and OUT/summary.md; resumable",
                              description="Run segment → explain → score (→ Dice/HD95 against a reference) on every "
                              "case of CASES. A rerun skips the cases done with the same input, model and parameters "
                              "and redoes what changed; a bad case is recorded as failed and the others go on.")
    p.add_argument("cases", metavar="CASES", help="a folder of CT volumes (or of DICOM folders), a quoted glob, a CSV "
                   "with an image column and optional reference, target and case columns, or a JSON case list "
                   "(configs/cases/*.json)")
    p.add_argument("-o", "--output", required=True, help="output folder (OUT/<case>/, results.csv, summary.md, manifest/)")
    p.add_argument("--model", default=None, help="bundled model name or model folder (default: the bundled default)")
    p.add_argument("--methods", default=None, help=f"comma-separated, from: {','.join(METHODS)} (default: the card's measured method)")
    p.add_argument("--target", default=None, help="class to explain (a CSV target column overrides it per case)")
    p.add_argument("--region", default="predicted", help="predicted | whole | empty | point:R,A,S[:RADIUS]")
    p.add_argument("--layer", default=None, help="layer for the CAM methods")
    p.add_argument("--steps", type=int, default=32, help="Integrated Gradients steps (default 32)")
    p.add_argument("--baseline", default="blur", choices=BASELINES, help="Integrated Gradients baseline")
    p.add_argument("--scores", default=",".join(DEFAULT_GROUPS), help=f"score groups, from: {','.join(GROUPS)}")
    p.add_argument("--no-quality", action="store_true", help="skip the explanation scores (faster)")
    p.add_argument("--curve-steps", type=int, default=10, help="deletion/insertion steps (at least 10)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: torch's own for "
                   "local, 1 per Ray CPU worker)")
    p.add_argument("--engine", default="local", choices=("local", "ray"), help="local (default: one model load, a "
                   "progress bar) or ray (pip install 'segxai[ray]': one worker per GPU or CPU slot)")
    p.add_argument("--address", default=None, help="with --engine ray: the cluster to join (e.g. auto, or ray://HOST:10001)")
    p.add_argument("--workers", type=int, default=None, help="with --engine ray: how many workers (default: one per GPU, else per CPU)")
    p.add_argument("--part", default=None, metavar="K/N", help="run only shard K of N (e.g. $SLURM_ARRAY_TASK_ID/8); "
                   "the tables cover every case finished so far")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from .batch.cases import read_cases, select_part
    from .batch.engines import run_batch
    from .batch.per_case import BatchParams
    from .errors import SegXAIError
    from .explaining import parse_methods
    from .targets import parse_region

    if args.threads is not None and args.threads < 1:
        raise SegXAIError(f"--threads must be at least 1, got {args.threads}")
    if args.address and args.engine != "ray":
        raise SegXAIError("--address joins a Ray cluster; add --engine ray")
    parse_region(args.region)  # a bad region fails before any case
    methods = tuple(parse_methods(args.methods)) if args.methods else ()
    cases = read_cases(args.cases)
    mine = select_part(cases, args.part)
    params = BatchParams(methods=methods, target=args.target, region=args.region, layer=args.layer, steps=args.steps,
                         baseline=args.baseline, scores=tuple(s for s in args.scores.split(",") if s),
                         quality=not args.no_quality, curve_steps=args.curve_steps, precision=args.precision,
                         seed=args.seed, device=args.device, threads=args.threads)
    print(f"segxai batch: {len(mine)} case(s)" + (f" (part {args.part} of {len(cases)})" if args.part else "")
          + f", engine {args.engine}")
    result = run_batch(mine, args.output, params, args.model, args.engine, args.address, args.workers,
                       all_cases=cases)
    print(f"ran {result['ran']}, skipped {result['skipped']}; {result['done']} done, {result['failed']} failed "
          f"in {args.output} ({result['seconds']:.1f} s)")
    print(f"wrote {result['files']['csv']} and {result['files']['summary']}")
    return 1 if result["failed"] and not result["done"] else 0
