"""Cohorts: ``segxai batch`` runs segment → explain → score over many cases, resumably, on one machine or a Ray cluster.

``cases`` reads what to run, ``per_case`` is the one function every engine calls for a case, ``manifest`` makes
reruns skip what is done and redo what changed, ``table`` writes results.csv/.parquet and summary.md, and
``engines`` drives the cases locally, on Ray, or as one ``--part K/N`` shard.
"""
