"""Start a background process for the Slicer module, read its output safely, and stop it with all its children.

``PythonSlicer`` is a launcher: it starts the real Python as a child, which may start workers of its own. Killing
only the launcher leaves the Python child computing (the CPU or GPU stays busy), so :func:`kill_tree` stops the
whole tree: the process is started in its own process group (POSIX) or process group + job of ``taskkill /T``
(Windows), and the group is killed.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Callable, Optional

#: Windows: no console window for the child (PythonSlicer.exe is a console program)
CREATE_NO_WINDOW = 0x08000000
CREATE_NEW_PROCESS_GROUP = 0x00000200


def popen_options(platform: Optional[str] = None) -> dict:
    """Extra ``subprocess.Popen`` arguments: its own process group, and on Windows no console window."""
    platform = platform or os.name
    if platform == "nt":
        options = {"creationflags": CREATE_NO_WINDOW | CREATE_NEW_PROCESS_GROUP}
        startupinfo_class = getattr(subprocess, "STARTUPINFO", None)
        if startupinfo_class is not None:  # only exists on Windows
            info = startupinfo_class()
            info.dwFlags |= getattr(subprocess, "STARTF_USESHOWWINDOW", 1)
            info.wShowWindow = 0  # SW_HIDE
            options["startupinfo"] = info
        return options
    return {"start_new_session": True}


def child_environment(base: Optional[dict] = None) -> dict:
    """The environment for a Python child: UTF-8 output (a Windows console code page would otherwise garble
    non-ASCII paths in its messages) and unbuffered lines, so progress arrives as it happens."""
    env = dict(os.environ if base is None else base)
    env["PYTHONIOENCODING"] = "utf-8"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start(command: list, env: Optional[dict] = None, cwd: Optional[str] = None) -> subprocess.Popen:
    """Start ``command`` with stdout and stderr merged into one binary pipe (decoded by :func:`read_lines`)."""
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, cwd=cwd, **popen_options())


def read_lines(process: subprocess.Popen, deliver: Callable[[Optional[str]], None]) -> None:
    """Hand every output line to ``deliver`` as text, then ``None`` at the end.

    Bytes that are not UTF-8 (a Windows code page, a library printing binary) become U+FFFD instead of raising
    UnicodeDecodeError, which would end this reader thread and leave the panel waiting forever.
    """
    try:
        for raw in iter(process.stdout.readline, b""):
            deliver(raw.decode("utf-8", errors="replace"))
    except (OSError, ValueError):  # the pipe was closed under us (process killed)
        pass
    finally:
        try:
            process.wait()
        finally:
            deliver(None)


def kill_tree(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """Stop ``process`` and every process it started (children, grandchildren); wait until it is gone."""
    if process is None or process.poll() is not None:
        return
    if os.name == "nt":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, **popen_options("nt"))
    else:
        try:
            os.killpg(os.getpgid(process.pid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        process.kill()
    except OSError:
        pass
    process.wait(timeout=timeout)


def python_executable(slicer_python: str = sys.executable) -> str:
    """``PythonSlicer`` beside Slicer's own Python (sets up Slicer's library paths), else that Python itself."""
    import shutil

    name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
    path = os.path.join(os.path.dirname(slicer_python), name)
    return path if os.path.exists(path) else (shutil.which("PythonSlicer") or slicer_python)


class BackgroundJob:
    """Commands run one after another in the background; :meth:`poll` hands back what happened since last time.

    Events: ``("line", text)`` for each output line, ``("finished", 0)`` when every command succeeded,
    ``("failed", (argv, exit code))`` when one did not (the rest are skipped), ``("cancelled", None)``.
    """

    def __init__(self, commands: list, env: Optional[dict] = None) -> None:
        import queue

        self.commands = [list(c) for c in commands]
        self.env = env
        self.process: Optional[subprocess.Popen] = None
        self._queue = queue.Queue()
        self._step = -1
        self._done = False

    @property
    def running(self) -> bool:
        return not self._done

    def start(self) -> "BackgroundJob":
        self._next()
        return self

    def _next(self) -> None:
        import threading

        self._step += 1
        if self._step >= len(self.commands):
            self._done = True
            self._queue.put(("finished", 0))
            return
        self.process = start(self.commands[self._step], env=self.env)
        threading.Thread(target=read_lines, args=(self.process, self._deliver), daemon=True).start()

    def _deliver(self, line: Optional[str]) -> None:
        self._queue.put(("line", line) if line is not None else ("end", None))

    def poll(self) -> list:
        import queue

        events = []
        while True:
            try:
                kind, payload = self._queue.get_nowait()
            except queue.Empty:
                return events
            if kind != "end":
                events.append((kind, payload))
                continue
            if self._done:  # cancelled: the reader's end marker comes after the cancel event
                continue
            code = self.process.returncode
            if code != 0:
                self._done = True
                events.append(("failed", (self.commands[self._step], code)))
            else:
                self._next()

    def release(self) -> None:
        """The job said it is done (its last line came): stop following it and let the process exit by itself."""
        self._done = True

    def cancel(self) -> None:
        """Kill the running command's whole process tree; no further command starts."""
        if self._done:
            return
        self._done = True
        kill_tree(self.process)
        self._queue.put(("cancelled", None))
