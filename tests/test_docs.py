"""What a user reads stays inside the repository: no pointer to private references, no dead relative link.

User-facing text is README.md, docs/*.md, configs/**/*.yaml and every ``--help`` of the CLI. None of it may cite
the private design reference ("DESIGN") or a path outside the repository ("../shared"; README's Development
section, which is for people working on the project itself, may name it). Every relative link in README.md and
docs/*.md must point at a file or folder that exists inside the repository.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from fpsiam.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("DESIGN", "../shared")
DEV_SECTION = "Development"

MARKDOWN = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_EXTERNAL = re.compile(r"^([a-z][a-z0-9+.-]*:|//|#)", re.I)


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _without_section(text: str, title: str) -> str:
    """``text`` minus the level-2 section named ``title`` (up to the next level-1/2 heading outside code blocks)."""
    out, skipping, fenced = [], False, False
    for line in text.splitlines(keepends=True):
        if line.startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and re.match(r"^#{1,2} ", line):
            skipping = line.lstrip("#").strip() == title
        if not skipping:
            out.append(line)
    return "".join(out)


def _hits(text: str, allowed: tuple[str, ...] = ()) -> list[str]:
    return [word for word in FORBIDDEN if word not in allowed and word in text]


def _links(text: str) -> list[str]:
    """Targets of the inline Markdown links and images of ``text``, outside code blocks."""
    return [m.group(1) for m in _LINK.finditer(_FENCE.sub("", text))]


def _parsers(parser: argparse.ArgumentParser, prog: str = "fpsiam") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every parser of the CLI, depth first: ``("fpsiam data convert", parser)``, ..."""
    yield prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{prog} {name}")


def test_the_docs_exist():
    names = {p.name for p in MARKDOWN}
    assert {"README.md", "method.md", "detection.md", "data.md", "fidelity.md"} <= names
    assert CONFIGS, "no configs/*.yaml found"


@pytest.mark.parametrize("path", MARKDOWN + CONFIGS, ids=_rel)
def test_user_files_do_not_point_outside_the_repo(path: Path):
    text = path.read_text(encoding="utf-8")
    if path == ROOT / "README.md":
        assert "DESIGN" not in text, f"{_rel(path)} cites DESIGN"
        text = _without_section(text, DEV_SECTION)  # the Development section may name ../shared
    assert not _hits(text), f"{_rel(path)} contains {_hits(text)}"


def test_readme_development_section_is_the_one_exception():
    """The exception above must not swallow the rest of README (a renamed heading would)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    kept = _without_section(text, DEV_SECTION)
    assert f"## {DEV_SECTION}" in text
    assert len(kept) > 0.8 * len(text)


@pytest.mark.parametrize("path", MARKDOWN, ids=_rel)
def test_relative_links_resolve_inside_the_repo(path: Path):
    text = path.read_text(encoding="utf-8")
    broken = []
    for target in _links(text):
        if _EXTERNAL.match(target):
            continue
        resolved = (path.parent / target.split("#", 1)[0]).resolve()
        if not resolved.is_relative_to(ROOT) or not resolved.exists():
            broken.append(target)
    assert not broken, f"{_rel(path)}: links to missing or outside files: {broken}"


def test_link_extraction():
    text = 'see [a](docs/a.md#x), ![img](b.png "t"), [web](https://x.org), [top](#top)\n```\n[no](c.md)\n```\n'
    assert _links(text) == ["docs/a.md#x", "b.png", "https://x.org", "#top"]
    assert [t for t in _links(text) if not _EXTERNAL.match(t)] == ["docs/a.md#x", "b.png"]


def test_every_help_is_walked():
    progs = [prog for prog, _ in _parsers(build_parser())]
    assert "fpsiam" in progs and "fpsiam data convert" in progs and "fpsiam detect train" in progs


def test_cli_help_does_not_point_outside_the_repo():
    found = {}
    for prog, parser in _parsers(build_parser()):
        hits = _hits(parser.format_help())
        if hits:
            found[prog] = hits
    assert not found, f"--help texts citing private references: {found}"
