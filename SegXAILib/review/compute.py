"""``segxai review CT --model M ...``: ``segxai explain`` run in a background process, its progress (JSON lines on
stderr, ``--progress lines``) shown in the page; stopping the review cancels it.

A separate process, as SlicerMONAIAuto3DSeg runs its inference: the page stays responsive while the model works,
and cancelling is killing the process (``segxai explain`` writes every file atomically, so nothing half-written
is left behind).
"""
from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

#: ``segxai explain`` options the review passes through (name -> has a value)
PASSED = {"model": True, "methods": True, "target": True, "region": True, "layer": True, "steps": True,
          "reference": True, "scores": True, "device": True, "no_quality": False, "trust_model": False}


def explain_options(args) -> list:
    """The ``segxai explain`` options among ``args`` (argparse namespace), as command-line words."""
    words = []
    for name, takes_value in PASSED.items():
        value = getattr(args, name, None)
        if value in (None, False, ""):
            continue
        flag = "--" + name.replace("_", "-")
        words += [flag, str(value)] if takes_value else [flag]
    return words


@dataclass
class Stage:
    """One stage of the run as the page lists it: its name, how far it got, when it began and ended (monotonic s)."""

    name: str
    started: float
    fraction: float = 0.0
    ended: Optional[float] = None

    def seconds(self, now: float) -> float:
        return (self.ended if self.ended is not None else now) - self.started


@dataclass
class ExplainJob:
    """One ``segxai explain`` run into ``out_dir``; :meth:`run` follows it, :meth:`cancel` stops it."""

    ct: Path
    out_dir: Path
    options: list
    stages: list = field(default_factory=list)
    messages: list = field(default_factory=list)   # stderr lines that are not progress (model, warnings, errors)
    returncode: Optional[int] = None
    process: Optional[asyncio.subprocess.Process] = None

    @property
    def argv(self) -> list:
        return [sys.executable, "-m", "SegXAILib.cli", "explain", str(self.ct), "-o", str(self.out_dir),
                "--progress", "lines", *self.options]

    @property
    def error(self) -> str:
        """The run's own error line (``segxai: error: …``) when it failed, else its last message; "" when it did not fail."""
        if self.returncode in (None, 0):
            return ""
        errors = [m for m in self.messages if m.startswith("segxai: error:")]
        last = errors[-1] if errors else (self.messages[-1] if self.messages else f"segxai explain exited with {self.returncode}")
        return last.removeprefix("segxai: error: ")

    def follow(self, line: str, now: float) -> bool:
        """Take one stderr line: a progress update (True) or a message (False)."""
        try:
            update = json.loads(line)
        except ValueError:
            update = None
        if not (isinstance(update, dict) and "stage" in update and "fraction" in update):
            if line.strip():
                self.messages.append(line.strip())
            return False
        stage = str(update["stage"])
        if not self.stages or self.stages[-1].name != stage:
            if self.stages:  # the next stage began: the one before is complete
                self.stages[-1].ended, self.stages[-1].fraction = now, 1.0
            self.stages.append(Stage(stage, now))
        self.stages[-1].fraction = float(update["fraction"])
        return True

    async def run(self, on_change: Callable[["ExplainJob"], None]) -> int:
        """Start the process, call ``on_change(self)`` after each update, return its exit code."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.process = await asyncio.create_subprocess_exec(*self.argv, stdout=asyncio.subprocess.DEVNULL,
                                                            stderr=asyncio.subprocess.PIPE)
        while True:
            raw = await self.process.stderr.readline()
            if not raw:
                break
            self.follow(raw.decode("utf-8", "replace").rstrip("\n"), time.monotonic())
            on_change(self)
        self.returncode = await self.process.wait()
        if self.stages and self.stages[-1].ended is None:
            self.stages[-1].ended = time.monotonic()
        on_change(self)
        return self.returncode

    def cancel(self) -> None:
        """Stop the process if it still runs."""
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()

    def lines(self, now: Optional[float] = None) -> list:
        """``[{name, text}]``: each stage with its per cent and seconds, for the page's progress list."""
        now = time.monotonic() if now is None else now
        return [{"name": s.name, "text": f"{s.fraction:.0%}, {s.seconds(now):.1f} s"} for s in self.stages]
