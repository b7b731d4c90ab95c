"""Frame index benchmark: how long and how much memory the index of a large image tree takes.

LDPolypVideo's pretraining set is 861,400 frames in 103 video folders (docs/data.md). This script builds
a tree of ``--frames`` files in ``--videos`` folders (zero-length ``.jpg`` files: indexing only lists
names, it never opens a file), times ``open_frames(root)``, measures the index memory three ways
(``frame_index_nbytes``, the tracemalloc peak while building, the process RSS delta) and projects each
linearly to 861,400 frames. Targets: build < 60 s and index < 200 MB at that scale.

It then shows the copy-on-read point: two forked DataLoader workers each walk every index (no decoding)
of the numpy index, and of a baseline list of one dict per frame; the growth of each worker's private
memory (pages it had to copy from the parent because reference counts were written) is reported.

    .venv/bin/python benchmarks/frame_index.py              # 100,000 frames, writes benchmarks/README.md
    .venv/bin/python benchmarks/frame_index.py --no-write --frames 861400
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import re
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from fpsiam.data.frames import FrameSource, frame_index_nbytes, open_frames
from fpsiam.fileio import atomic_open

LDPOLYPVIDEO_FRAMES = 861_400
README = Path(__file__).resolve().parent / "README.md"
SECTION = "## Frame index"
MB = 1e6


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def private_bytes() -> int:
    """Pages only this process maps (copied after fork, or its own): Private_Clean + Private_Dirty."""
    total = 0
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1]) * 1024
    return total


def make_tree(root: Path, frames: int, videos: int) -> float:
    start = time.perf_counter()
    per_video = -(-frames // videos)
    made = 0
    for v in range(videos):
        folder = root / "VideosWithoutPolyps" / "Images" / f"{v:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(min(per_video, frames - made)):
            os.close(os.open(folder / f"{i + 1:06d}.jpg", os.O_CREAT | os.O_WRONLY, 0o644))
        made += min(per_video, frames - made)
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------------ copy-on-read


class TouchIndex(Dataset):
    """Item ``k`` walks every frame's index entry (as a DataLoader worker would over an epoch).

    Only the walk is measured. A garbage collection in the worker would copy the pages of every tracked
    object (the dicts, and all of torch's module objects alike), so it is left out to isolate the index.
    """

    def __init__(self, index: FrameSource | list[dict]) -> None:
        self.index = index

    def __len__(self) -> int:
        return 2

    def __getitem__(self, k: int) -> tuple[int, int, int]:
        before = private_bytes()
        index = self.index
        n = 0
        if isinstance(index, list):
            for item in index:  # what a per-frame dict dataset does in __getitem__
                n += len(item["path"]) + item["video"] + item["frame"]
        else:
            for i in range(len(index)):
                n += len(index.path_of(i)) + index.video_index(i) + index.frame_index(i)
        return os.getpid(), before, private_bytes()


def worker_growth(index: FrameSource | list[dict]) -> float:
    """Mean private-memory growth (bytes) of 2 forked workers that each walk the whole index once."""
    loader = DataLoader(TouchIndex(index), batch_size=None, num_workers=2, multiprocessing_context="fork")
    growths = [after - before for _, before, after in loader]
    return sum(growths) / len(growths)


# ------------------------------------------------------------------------------------------ report


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
            model = m.group(1).strip() if m else model
    except OSError:
        pass
    return (
        f"{model}, nproc {os.cpu_count()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}, numpy {__import__('numpy').__version__}"
    )


def write_section(text: str) -> None:
    """Replace (or add) the ``## Frame index`` section of benchmarks/README.md, keeping the others."""
    old = README.read_text() if README.exists() else "# Benchmarks\n\nRecorded results; rerun the command shown.\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.M | re.S)
    new = pattern.sub(lambda _: text, old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text
    with atomic_open(README) as f:
        f.write(new)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--videos", type=int, default=100)
    parser.add_argument("--root", type=Path, help="where to build the tree (default: a temp dir, removed after)")
    parser.add_argument("--no-workers", action="store_true", help="skip the copy-on-read measurement")
    parser.add_argument("--no-write", action="store_true", help=f"do not update {README.name}")
    args = parser.parse_args(argv)

    tmp = None
    root = args.root
    if root is None:
        tmp = tempfile.mkdtemp(prefix="fpsiam-frame-index-")
        root = Path(tmp)
    try:
        t_make = make_tree(root, args.frames, args.videos)

        gc.collect()
        rss0 = rss_bytes()
        t0 = time.perf_counter()
        source = open_frames(root)
        t_build = time.perf_counter() - t0
        gc.collect()
        rss_delta = rss_bytes() - rss0
        assert len(source) == args.frames, (len(source), args.frames)
        nbytes = frame_index_nbytes(source)

        tracemalloc.start()
        again = open_frames(root)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        del again

        growth_ours = growth_dicts = None
        if not args.no_workers:
            growth_ours = worker_growth(source)
            dicts = [
                {"path": source.path_of(i), "video": source.video_index(i), "frame": source.frame_index(i)}
                for i in range(len(source))
            ]
            growth_dicts = worker_growth(dicts)
            del dicts
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    n = args.frames
    scale = LDPOLYPVIDEO_FRAMES / n
    rows = [
        ("build time (warm cache)", f"{t_build:.2f} s", f"{t_build / n * 1e6:.1f} µs", f"{t_build * scale:.1f} s"),
        ("frame_index_nbytes", f"{nbytes / MB:.2f} MB", f"{nbytes / n:.1f} B", f"{nbytes * scale / MB:.1f} MB"),
        ("tracemalloc peak in build", f"{peak / MB:.2f} MB", f"{peak / n:.1f} B", f"{peak * scale / MB:.1f} MB"),
        (
            "RSS delta after build",
            f"{rss_delta / MB:.2f} MB",
            f"{rss_delta / n:.1f} B",
            f"{rss_delta * scale / MB:.1f} MB",
        ),
    ]
    if growth_ours is not None and growth_dicts is not None:
        rows += [
            (
                "worker private growth, numpy index",
                f"{growth_ours / MB:.2f} MB",
                f"{growth_ours / n:.1f} B",
                f"{growth_ours * scale / MB:.1f} MB",
            ),
            (
                "worker private growth, list of dicts",
                f"{growth_dicts / MB:.2f} MB",
                f"{growth_dicts / n:.1f} B",
                f"{growth_dicts * scale / MB:.1f} MB",
            ),
        ]
    header = ("measure", f"{n:,} frames", "per frame", f"projected to {LDPOLYPVIDEO_FRAMES:,}")
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(4)]
    table = "\n".join(
        "| " + " | ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) + " |"
        for r in [header, tuple("-" * w for w in widths), *rows]
    )
    command = "python benchmarks/frame_index.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"tree: {n:,} zero-length .jpg files in {args.videos} folders (made in {t_make:.1f} s)")
    print(table)
    verdict = (
        f"Projected to {LDPOLYPVIDEO_FRAMES:,} frames: build {t_build * scale:.1f} s (target < 60 s), "
        f"index {max(nbytes, peak) * scale / MB:.0f} MB at most while building (target < 200 MB)."
    )
    print(verdict)

    if not args.no_write:
        notes = (
            "The tree is zero-length `.jpg` files named `000001.jpg`… in `VideosWithoutPolyps/Images/<NNN>/` "
            "(the LDPolypVideo PreTrain layout): indexing lists names and never opens a file. Build time is "
            "with the directory entries in the OS cache (just written); a cold disk adds its listing time. "
            "The tracemalloc peak is a second build under tracemalloc (which slows it, so it is not timed). "
            "Worker growth: two DataLoader workers forked from the process holding the index each walk all "
            "frames' path / video / frame number once; the growth of their private "
            "memory (`Private_Clean + Private_Dirty` in `/proc/self/smaps_rollup`) is the parent's pages they "
            "had to copy because reading a Python object writes its reference count (copy-on-read). RSS does "
            "not show it: a forked child's RSS already counts the shared pages. The baseline holds the same "
            "facts as one `{'path', 'video', 'frame'}` dict per frame. A `gc.collect()` in a worker would copy the "
            "pages of every container object on top (all the dicts; the numpy index is a handful of objects)."
        )
        section = (
            f"{SECTION}\n\n"
            f"`fpsiam.data.frames.open_frames` on a tree of {n:,} frames in {args.videos} video folders.\n\n"
            f"- machine: {machine()}\n"
            f"- date: {datetime.date.today().isoformat()}\n"
            f"- command: `{command.strip()}`\n\n"
            f"{table}\n\n{verdict}\n\n{notes}\n"
        )
        write_section(section)
        print(f"wrote the '{SECTION[3:]}' section of {README}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
