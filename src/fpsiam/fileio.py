"""Atomic writes: every output file appears whole or not at all (temp file in the same folder + rename)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, on error removed.

    Use for writers that want a file name (torch.save, safetensors, PIL, PyAV).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions open() would
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _fsync(tmp_path)  # the bytes are on disk before the name is: a power loss leaves the old file, not an empty one
        os.replace(tmp_path, path)
        _fsync(path.parent)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _fsync(path: Path) -> None:
    """fsync a file or a folder (a folder's entry list: the rename itself)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders; the data fsync is what matters
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """``open`` for writing that only replaces ``path`` once the block finished without an error."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> None:
    """Write ``obj`` as JSON atomically."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent)
        f.write("\n")


MAX_NESTING = 200  # YAML configs nested deeper than this are refused (a config is 3 levels deep)


def parse_json(text: str, where: str | os.PathLike) -> Any:
    """``json.loads`` with every failure one FpsiamError naming ``where`` (and the line for a syntax error)."""
    from fpsiam.errors import FpsiamError

    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise FpsiamError(f"{where}:{e.lineno}: not valid JSON ({e.msg}); fix or regenerate the file") from None
    except RecursionError:
        raise FpsiamError(
            f"{where}: nested too deeply to be read (hundreds of levels); not a file fpsiam reads"
        ) from None  # noqa: E501
    return data


def read_json(path: str | os.PathLike, what: str = "a JSON file") -> Any:
    """Read and parse a JSON file; missing, unreadable, non-UTF-8, invalid or absurdly nested: one FpsiamError."""
    from fpsiam.errors import FpsiamError

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FpsiamError(f"{path}: file not found; pass {what}") from None
    except UnicodeDecodeError:
        raise FpsiamError(f"{path}: not a UTF-8 text file; pass {what}") from None
    except OSError as e:
        raise FpsiamError(f"{path}: cannot read ({e.strerror}); pass {what}") from None
    return parse_json(text, path)


def check_nesting(data: Any, where: str | os.PathLike, limit: int = MAX_NESTING, budget: int = 100_000) -> None:
    """Refuse structures nested deeper than ``limit`` or holding more than ``budget`` values once shared references
    are expanded (a YAML alias bomb is a few hundred bytes that expand to billions of values)."""
    from fpsiam.errors import FpsiamError

    stack = [(data, 0)]
    seen = 0
    while stack:
        node, depth = stack.pop()
        seen += 1
        if depth > limit:
            raise FpsiamError(f"{where}: nested more than {limit} levels deep; not a file fpsiam writes or reads")
        if seen > budget:
            raise FpsiamError(f"{where}: expands to more than {budget:,} values (YAML aliases?); refused")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
