"""The run folder: the names of its files (here, once), its lock, and the rules that keep it sound.

Every training command (``fpsiam pretrain``, ``fpsiam detect train``, ``fpsiam experiment``) writes into one run
folder. Runs last days on shared machines, where a second job into the same folder, a kill in the middle of a
write or a resume with other settings are ordinary; so:

- :class:`RunLock`: an exclusive OS lock (``flock``) on ``RUN_DIR/.fpsiam.lock`` for the whole run. A second run
  into the folder fails at once, naming the holder's pid. The OS drops the lock when its process dies (even on
  ``kill -9``), so a lock left by a dead process never blocks anyone.
- :func:`clean_temp_files`: the temp files of writes a kill interrupted are removed when the next run starts.
- :func:`check_resume_config`: a resume continues the *same* run: every key of the effective config must equal
  the one the run was started with, except the keys in :data:`SAFE_TO_CHANGE` (logging, loader workers, and
  ``epochs`` to extend a run). Anything else is refused with one line listing the keys, unless the caller passes
  ``allow=True`` (``--allow-config-change``).
- :func:`newest_intact_checkpoint`: resume from the newest checkpoint that reads back; a damaged newest one is
  skipped and said so.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fpsiam.errors import FpsiamError

# ------------------------------------------------------------------------------------------ file names
CONFIG = "config.yaml"  # the effective config (file + --set)
RUN_INFO = "run.json"  # what the run ran on (device, batch, lr...) and its sessions (versions, commit, command, host)
LOG = "log.txt"  # a copy of the console, warnings included
METRICS = "metrics.jsonl"  # one row per logged step / epoch / probe (the source of truth)
CHECKPOINTS = "checkpoints"  # ckpt_<global step>.pt, the newest keep_last of them
SUMMARY = "summary.json"  # pretraining: written when the run finished
BACKBONE = "backbone.safetensors"  # pretraining: the backbone, torchvision keys
RESULTS = "results.json"  # detection: written when the run finished (best / last / history)
BEST_MODEL = "best.safetensors"  # detection: the model of the best val epoch
LAST_MODEL = "last.safetensors"  # detection: the model of the last epoch
VAL_PREDICTIONS = "val_predictions.json"  # detection: COCO results of the last model on the val set
TEST_METRICS = "test_metrics.json"  # experiment: the last model's metrics on the test set
TEST_PREDICTIONS = "test_metrics.predictions.json"  # experiment: the last model's COCO results on the test set
SAMPLES = "samples"  # experiment: sample pictures (predicted vs true boxes)
LOCK = ".fpsiam.lock"

# Keys a resume may change: they change what is printed or kept, not what is computed (and ``epochs`` extends
# a run: with the cosine schedule the lr of the remaining epochs then follows the new length).
SAFE_TO_CHANGE = (
    "train.progress", "train.log_every", "train.tensorboard", "train.keep_last", "train.checkpoint_every",
    "train.checkpoint_steps", "train.epochs", "train.eval_every", "data.workers", "probe.", "train.mlflow",
)  # fmt: skip


class RunLock:
    """``with RunLock(run_dir):`` holds an exclusive lock on the run folder (no-op when ``enabled`` is False).

    Only the main process of a distributed run takes it: the others write nothing into the folder.
    """

    def __init__(self, run_dir: str | os.PathLike, enabled: bool = True):
        self.path = Path(run_dir) / LOCK
        self.enabled = enabled
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        if not self.enabled:
            return self
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise FpsiamError(
                f"{self.path.parent}: another fpsiam run (pid {holder}) is writing into this folder; "
                "wait for it to finish, or pass another -o"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def clean_temp_files(run_dir: str | os.PathLike) -> list[Path]:
    """Remove the temp files of atomic writes a kill interrupted (``.<name>.<random>.tmp*``); returns them."""
    removed = []
    for folder in (Path(run_dir), Path(run_dir) / CHECKPOINTS):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if p.name.startswith(".") and ".tmp" in p.name and p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def config_changes(
    old: dict[str, Any], new: dict[str, Any], defaults: dict[str, Any] | None = None
) -> list[tuple[str, Any, Any]]:
    """``(key, old value, new value)`` for every dotted key that differs and is not safe to change.

    A key the old config lacks (added by a later fpsiam) is no change when the new value is its default in
    ``defaults``: a run started before the key existed behaved as the default does.
    """
    a, b = _flat(old), _flat(new)
    d = _flat(defaults) if defaults is not None else {}
    keys = sorted(set(a) | set(b))
    return [
        (k, a.get(k), b.get(k))
        for k in keys
        if a.get(k) != b.get(k)
        and not k.startswith(SAFE_TO_CHANGE)
        and not (k not in a and k in d and b.get(k) == d[k])
    ]


def check_resume_config(
    old: dict[str, Any] | None,
    new: dict[str, Any],
    where: str | Path,
    allow: bool,
    defaults: dict[str, Any] | None = None,
) -> None:
    """Refuse to resume a run with another effective config (the checkpoint's), unless ``allow``.

    ``defaults``: the config type's defaults, so keys added since the run started (at their default) pass.
    """
    if old is None:
        return
    changes = config_changes(old, new, defaults)
    if not changes or allow:
        return
    shown = "; ".join(f"{k}: {_short(a)} -> {_short(b)}" for k, a, b in changes[:6])
    more = f" (and {len(changes) - 6} more)" if len(changes) > 6 else ""
    raise FpsiamError(
        f"{where}: the run was started with another config: {shown}{more}. Resume with the run's own settings "
        "(its config.yaml), pass --allow-config-change to continue with these, or use a new -o RUN_DIR"
    )


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def newest_intact_checkpoint(
    run_dir: str | os.PathLike, load: Callable[[Path], dict[str, Any]], warn: Callable[[str], None]
) -> tuple[Path | None, dict[str, Any] | None]:
    """The newest checkpoint that ``load`` reads back, skipping (and naming) damaged newer ones."""
    from fpsiam.train.checkpoint import list_checkpoints

    damaged: list[str] = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            ckpt = load(path)
        except FpsiamError as e:
            damaged.append(f"{path.name} ({str(e)[len(str(path)) + 2 :][:80]})")
            continue
        if damaged:
            warn(f"warning: skipped damaged checkpoint(s) {', '.join(damaged)}; resuming from {path}")
        return path, ckpt
    if damaged:
        raise FpsiamError(f"{run_dir}: every checkpoint is damaged ({', '.join(damaged)}); start a new -o RUN_DIR")
    return None, None


@contextlib.contextmanager
def run_folder(run_dir: str | os.PathLike, is_main: bool = True) -> Iterator[list[Path]]:
    """Lock the folder (main process) and clean up after a killed predecessor; yields the temp files removed."""
    with RunLock(run_dir, enabled=is_main):
        yield clean_temp_files(run_dir) if is_main else []


class RunFolder:
    """Read a finished (or interrupted) run through its file names: ``RunFolder(path).read(RESULTS)``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    def has(self, name: str) -> bool:
        return (self.path / name).is_file()

    def read(self, name: str) -> Any:
        """A json file of the run (FpsiamError naming it when damaged)."""
        from fpsiam.fileio import read_json

        return read_json(self.path / name, f"the run's {name}")

    def rows(self) -> list[dict[str, Any]]:
        """The rows of its metrics.jsonl (a torn last line dropped)."""
        return self.rows_of(METRICS)

    def rows_of(self, name: str) -> list[dict[str, Any]]:
        """The rows of a jsonl file of the run (a torn last line dropped)."""
        from fpsiam.train.metrics import MetricsLog

        return MetricsLog(self.path, Path(name).stem).rows()
