"""Where a run came from, kept in its folder: ``run.json`` (versions, git commit, command line, host, seed, one entry
per session of the run) and ``log.txt`` (a copy of what the console showed, warnings included).

A run folder then answers, months later, which code and which command produced its weights: ``run.json``'s
``sessions`` list grows by one entry each time the run is started or resumed.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fpsiam.fileio import read_json, write_json


def git_commit(where: Path | None = None) -> str | None:
    """The commit of the checkout fpsiam runs from (``+dirty`` with uncommitted changes); None outside git."""
    where = where or Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=5).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def session(seed: int | None = None) -> dict[str, Any]:
    """This process: versions, commit, command line, host, seed, start time."""
    import torch
    import torchvision

    from fpsiam import __version__

    return {
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "fpsiam": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
        "python": platform.python_version(), "git_commit": git_commit(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "host": socket.gethostname(),
        "pid": os.getpid(), "seed": seed,
    }  # fmt: skip


def write_run_info(path: Path, facts: dict[str, Any], seed: int | None) -> None:
    """``run.json``: ``facts`` of the run (device, batch...) and the list of sessions, this one appended."""
    sessions: list[dict[str, Any]] = []
    if path.is_file():
        with contextlib.suppress(Exception):  # an unreadable old file: start the list again
            old = read_json(path)
            sessions = list(old.get("sessions", [])) if isinstance(old, dict) else []
    write_json(path, {**facts, "sessions": [*sessions, session(seed)]})


class _Tee(io.TextIOBase):
    """Writes to the console stream and to the log; carriage-return redraws (progress bars) stay off the log."""

    def __init__(self, console: Any, log: Any):
        self.console, self.log = console, log

    def write(self, text: str) -> int:
        self.console.write(text)
        if "\r" not in text and "\x1b" not in text:
            self.log.write(text)
            self.log.flush()
        return len(text)

    def flush(self) -> None:
        self.console.flush()

    def isatty(self) -> bool:
        return self.console.isatty()

    def fileno(self) -> int:
        return self.console.fileno()


@contextlib.contextmanager
def console_log(path: Path, enabled: bool = True) -> Iterator[None]:
    """Copy stdout and stderr (warnings included) into ``path`` (appended: a resumed run continues its log)."""
    if not enabled:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as log:
        out, err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(out, log), _Tee(err, log)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = out, err
