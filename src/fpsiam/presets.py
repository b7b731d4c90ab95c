"""The YAML presets shipped inside the package (``fpsiam/configs/``), found by name or by path.

A preset's *name* is its file's path under ``configs/`` without ``.yaml``: ``fpsiam_r18_cpu``,
``experiments/kvasir_cpu``. Wherever a command takes a config file it also takes a name (with or without
``.yaml``; an experiment preset also by its bare stem, ``kvasir_cpu``), and ``configs/NAME.yaml`` as the
README writes it, from any folder: :func:`resolve`. A path that exists always wins over a preset.

Each preset is of one *kind*, the command that runs it: ``pretrain`` (``fpsiam pretrain``), ``detect``
(``fpsiam detect train``) or ``experiment`` (``fpsiam experiment``). The kind is read from the file's keys
(:func:`kind_of`): the config class whose sections and keys hold all of them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import os
import typing
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from fpsiam.config import DetectConfig, ExperimentConfig, PretrainConfig, yaml_load
from fpsiam.errors import FpsiamError

if TYPE_CHECKING:  # importlib.resources.abc is Python 3.11+; 3.10 has the same class in importlib.abc
    from importlib.resources.abc import Traversable

SUFFIXES = (".yaml", ".yml")
KINDS: dict[str, type] = {"pretrain": PretrainConfig, "detect": DetectConfig, "experiment": ExperimentConfig}
GROUPS = {"pretrain": "pretraining", "detect": "detection", "experiment": "experiments"}  # fpsiam config list
NOUNS = {"pretrain": "pretraining", "detect": "detection", "experiment": "experiment"}  # "a detection preset"
COMMANDS = {"pretrain": "fpsiam pretrain", "detect": "fpsiam detect train", "experiment": "fpsiam experiment"}


def root() -> Traversable:
    """The folder of the packaged presets (``importlib.resources``: works for any install, editable or not)."""
    return files("fpsiam") / "configs"


@functools.lru_cache(maxsize=1)
def _index() -> dict[str, Traversable]:
    """Every packaged preset by name, sorted by name."""
    found: dict[str, Traversable] = {}

    def walk(folder: Traversable, prefix: str) -> None:
        for entry in folder.iterdir():
            if entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
            elif entry.is_file() and entry.name.endswith(SUFFIXES):
                found[prefix + entry.name.rsplit(".", 1)[0]] = entry

    base = root()
    if base.is_dir():
        walk(base, "")
    return dict(sorted(found.items()))


def _fits(cls: type, raw: Any) -> bool:
    """Whether every key of ``raw`` is a key of dataclass ``cls``, with a mapping exactly where a section is.
    (Structure only: the types and ranges of the values are the loader's job.)"""
    if not isinstance(raw, dict):
        return False
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in raw.items():
        if key not in names:
            return False
        section = hints[key]
        if dataclasses.is_dataclass(section):
            if not _fits(section, value):
                return False
        elif isinstance(value, dict):
            return False
    return True


def _known(cls: type, raw: Any) -> int:
    """How many of the (dotted) keys of ``raw`` dataclass ``cls`` has: which kind a file with a typo likely is."""
    if not isinstance(raw, dict):
        return 0
    hints = typing.get_type_hints(cls)
    count = 0
    for key, value in raw.items():
        if key in hints:
            count += 1 + (_known(hints[key], value) if dataclasses.is_dataclass(hints[key]) else 0)
    return count


def kinds_of(raw: Any) -> list[str]:
    """The kinds whose config class holds every key of ``raw`` (a parsed YAML mapping)."""
    return [kind for kind, cls in KINDS.items() if _fits(cls, raw or {})]


def kind_of(raw: Any) -> str | None:
    """The one kind of config ``raw`` is, or None when no kind, or more than one, holds all its keys."""
    kinds = kinds_of(raw)
    return kinds[0] if len(kinds) == 1 else None


def read(path: str | os.PathLike) -> Any:
    """A preset's parsed YAML (None for an empty file); FpsiamError naming the file when it is not YAML."""
    try:
        return yaml_load(Path(path).read_text(encoding="utf-8"), str(path))
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise FpsiamError(f"{path}: not a YAML config ({type(e).__name__})") from None


@functools.cache
def _preset_kind(name: str) -> str | None:
    return kind_of(read(str(_index()[name])))


def preset_kind(name: str) -> str | None:
    """``pretrain``, ``detect`` or ``experiment`` for the packaged preset ``name`` (None: none fits it)."""
    return _preset_kind(name)


def preset_names(kind: str | None = None) -> list[str]:
    """The names of the packaged presets, sorted; of one kind (``pretrain``, ``detect``, ``experiment``) if given."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind {kind!r}: choose one of {', '.join(KINDS)}")
    return [name for name in _index() if kind is None or preset_kind(name) == kind]


def _candidates(text: str) -> list[str]:
    """The preset names ``text`` may mean: itself without suffix, without a leading ``configs/``, by stem."""
    name = text.replace("\\", "/").strip()
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    while name.startswith("./"):
        name = name[2:]
    names = [name]
    if "/configs/" in f"/{name}":  # configs/x or some/checkout/configs/x: the README's paths, from any folder
        names.append(f"/{name}".rsplit("/configs/", 1)[1])
    return names


def find(text: str) -> str | None:
    """The packaged preset ``text`` names (see :func:`resolve`), or None."""
    index = _index()
    for name in _candidates(text):
        if name in index:
            return name
        by_stem = [n for n in index if n.rsplit("/", 1)[-1] == name]
        if len(by_stem) == 1:
            return by_stem[0]
    return None


def resolve(name_or_path: str | os.PathLike, kind: str | None = None) -> Path:
    """The YAML file a command's CONFIG argument means: an existing file as given, else a packaged preset.

    A preset is named by its path under ``configs/`` with or without ``.yaml`` (``fpsiam_r18_cpu``,
    ``experiments/kvasir_cpu.yaml``), an experiment preset also by its stem (``kvasir_cpu``), and a path
    ending in ``configs/NAME.yaml`` that does not exist here means that preset. With ``kind``, a preset of
    another kind is an FpsiamError naming the command that runs it. Neither a file nor a preset: FpsiamError
    with the closest names and ``fpsiam config list``.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    text = os.fspath(name_or_path)
    name = find(text)
    if name is None:
        raise FpsiamError(_not_found(text, kind))
    if kind is not None:
        found = preset_kind(name)
        if found is not None and found != kind:
            raise FpsiamError(
                f"{text}: '{name}' is a {NOUNS[found]} preset; run it with {COMMANDS[found]} {name} "
                f"({NOUNS[kind]} presets: fpsiam config list)"
            )
    entry = _index()[name]
    return Path(entry) if isinstance(entry, os.PathLike) else Path(str(entry))


def _not_found(text: str, kind: str | None) -> str:
    """One line: not a file, not a preset; the closest preset names (of ``kind`` first) and where the list is."""
    names = preset_names(kind) if kind is not None else preset_names()
    stems = {n.rsplit("/", 1)[-1]: n for n in names}
    query = _candidates(text)[-1]
    close = difflib.get_close_matches(query, names, n=3, cutoff=0.5)
    close += [stems[s] for s in difflib.get_close_matches(query.rsplit("/", 1)[-1], list(stems), n=3, cutoff=0.5)]
    close = list(dict.fromkeys(close))[:3]
    hint = f"did you mean {', '.join(close)}? " if close else ""
    what = f"{NOUNS[kind]} preset" if kind is not None else "preset"
    return f"{text}: config file not found, nor a packaged {what} of that name; {hint}all presets: fpsiam config list"


def describe(name: str) -> str:
    """The first comment line of a packaged preset (its one-line description), or ""."""
    for line in _index()[name].read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            break
        if line.startswith("#") and line.lstrip("# ").strip():
            return line.lstrip("# ").strip()
    return ""


def listing(width: int = 118) -> str:
    """``fpsiam config list``: the packaged presets by kind, each with its one-line description."""
    groups: dict[str | None, list[str]] = {kind: [] for kind in KINDS}
    for name in preset_names():
        groups.setdefault(preset_kind(name), []).append(name)
    pad = max((len(n) for n in _index()), default=0) + 2
    lines = []
    for kind, names in groups.items():
        if not names:
            continue
        title = f"{GROUPS[kind]} ({COMMANDS[kind]} NAME):" if kind else "other (keys of no single config kind):"
        lines += [*([""] if lines else []), title]
        for name in names:
            text = f"  {name:<{pad}}{describe(name)}".rstrip()
            lines.append(text if len(text) <= width else text[: width - 3] + "...")
    lines += ["", f"presets: {root()}", "show one merged with overrides: fpsiam config show NAME [--set KEY=VALUE ...]"]
    return "\n".join(lines)


def show(name_or_path: str | os.PathLike, overrides: list[str] | None = None, kind: str | None = None) -> str:
    """``fpsiam config show``: the preset or file merged with ``--set`` overrides and validated, as the YAML
    :func:`fpsiam.config.save_config` writes. Without ``kind``, the kind is the one whose keys hold the file's
    and the overrides' keys; when several do (or none clearly), FpsiamError asking for ``--kind``."""
    from fpsiam.config import load_config, parse_override, set_dotted, to_dict

    overrides = list(overrides or [])
    if kind is None:
        raw = read(resolve(name_or_path))
        raw = raw if isinstance(raw, dict) else {}
        for item in overrides:
            key, value = parse_override(item)
            with contextlib.suppress(FpsiamError):  # a bad override: the strict load below says what is wrong
                set_dotted(raw, key, value, dict, "--set")
        kinds = kinds_of(raw)
        if not kinds:  # some key fits no kind: load with the likeliest, whose error names the key
            kinds = [max(KINDS, key=lambda k: _known(KINDS[k], raw))]
        if len(kinds) > 1:
            raise FpsiamError(
                f"{name_or_path}: its keys fit more than one kind of config ({', '.join(kinds)}); "
                f"pass --kind {'|'.join(KINDS)}"
            )
        kind = kinds[0]
    elif kind not in KINDS:
        raise FpsiamError(f"--kind {kind}: choose one of {', '.join(KINDS)}")
    cfg = load_config(KINDS[kind], name_or_path, overrides)
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


__all__ = [
    "COMMANDS",
    "GROUPS",
    "KINDS",
    "describe",
    "find",
    "kind_of",
    "kinds_of",
    "listing",
    "preset_kind",
    "preset_names",
    "resolve",
    "root",
    "show",
]
