"""Hostile but realistic input, across commands: one line naming the file / key / path, exit 2, nothing half-written.

Each test is a class of input, not one example: deeply nested JSON, permissions, a full disk, non-UTF-8 text,
values outside their range, decompression bombs, dangling links, pickles, YAML alias bombs, wrong types.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from fpsiam.cli import main, os_error_line
from fpsiam.data.images import reason
from fpsiam.data.synthetic import SynthOptions, synth_split

NESTED = "[" * 1000 + "]" * 1000  # 2 KB, 1,000 levels


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("synth")
    return synth_split(out, SynthOptions(videos=3, frames=2, width=64, height=56, mp4=False, seed=7))


def one_line_error(capsys, argv: list[str], *expect: str) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, (rc, err)
    assert err.startswith("fpsiam: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for e in expect:
        assert e in err, (e, err)
    return err


def as_nobody() -> list[str] | None:
    """A command prefix that drops root's file-permission override (capabilities), or None when not root."""
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.getuid() == 0 else None


def test_deeply_nested_json_is_one_line_everywhere(synth, tmp_path, capsys):
    bomb = tmp_path / "nested.json"
    bomb.write_text(NESTED)
    for argv in (
        ["data", "check", str(bomb)],
        ["data", "split", str(bomb), "--by", "image", "-o", str(tmp_path / "split")],
        ["data", "stats", str(bomb)],
        ["data", "convert", "--format", "coco", str(bomb), "-o", str(tmp_path / "c.json")],
        ["report", str(bomb)],
        ["detect", "train", "configs/retinanet_r18_fpn_cpu.yaml", "--train", str(bomb), "--val", str(bomb),
         "-o", str(tmp_path / "det")],
        ["gradcam", "random", str(bomb), "-o", str(tmp_path / "cam")],
        ["probe", "random", "--ann", str(bomb)],
    ):  # fmt: skip
        one_line_error(capsys, argv, str(bomb))
    assert not (tmp_path / "split").exists() and not (tmp_path / "c.json").exists()


def test_non_utf8_config_and_out_of_range_values_name_the_key(synth, tmp_path, capsys):
    cfg = tmp_path / "latin1.yaml"
    cfg.write_bytes("train:\n  epochs: 2  # r\xe9sum\xe9\n".encode("latin-1"))
    one_line_error(capsys, ["pretrain", str(cfg), "--data", str(synth["frames"])], str(cfg), "UTF-8")
    base = ["pretrain", "configs/fpsiam_r18_cpu.yaml", "--data", str(synth["frames"]), "-o", str(tmp_path / "r")]
    for item, key in (
        ("optim.lr=-0.1", "optim.lr"), ("optim.momentum=-5", "optim.momentum"),
        ("data.std=[0.2, 0, 0.2]", "data.std[1]"), ("data.min_scale=1.5", "data.min_scale"),
        ("optim.lr=.nan", "optim.lr"), ("train.device=tpu", "train.device"),
    ):  # fmt: skip
        one_line_error(capsys, [*base, "--set", item], f"'{key}'")
    if not torch.cuda.is_available():
        one_line_error(capsys, [*base, "--set", "train.device=cuda"], "device 'cuda'", "no CUDA GPU")
    assert not (tmp_path / "r").exists()


def test_yaml_alias_bomb_is_refused_quickly_with_a_short_line(tmp_path, capsys):
    lines = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 9):
        prev, cur = chr(96 + i), chr(97 + i)
        lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    lines.append("data: *i")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    assert bomb.stat().st_size < 500
    err = one_line_error(capsys, ["pretrain", str(bomb)], str(bomb))
    assert len(err) < 400
    err = one_line_error(capsys, ["pretrain", "configs/fpsiam_r18_cpu.yaml", "--set", "data.source=" + "x" * 100_000])
    assert len(err) < 700  # a huge value is echoed cut, not whole


def test_results_json_of_the_wrong_shape(tmp_path, capsys):
    bad = tmp_path / "results.json"
    bad.write_text(json.dumps({"runs": [{"arm": ["not", "a", "name"], "metrics": "high", "seed": {}}]}))
    one_line_error(capsys, ["report", str(bad)], str(bad), "runs[0].arm: expected text")
    assert not (tmp_path / "report.html").exists() and not (tmp_path / "table.md").exists()


def png_claiming(width: int, height: int) -> bytes:
    """A valid tiny PNG whose header announces width x height pixels (the decompression-bomb shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_decompression_bomb_refused_on_every_decode_path(synth, tmp_path, capsys, monkeypatch):
    from fpsiam.data.coco import CocoDetection
    from fpsiam.data.frames import open_frames
    from fpsiam.errors import FpsiamError

    folder = tmp_path / "frames"
    folder.mkdir()
    bomb = folder / "0001.png"
    bomb.write_bytes(png_claiming(30_000, 30_000))
    with pytest.raises(FpsiamError, match=r"0001\.png: 30000 x 30000 = 900,000,000 pixels, over the limit"):
        open_frames(folder).read(0)
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "frames/0001.png", "width": 30000, "height": 30000}],
                               "annotations": [{"image_id": 1, "bbox": [1, 1, 5, 5]}]}))  # fmt: skip
    with pytest.raises(FpsiamError, match="FPSIAM_MAX_IMAGE_PIXELS"):
        CocoDetection(ann)[0]
    rc = main(["data", "check", str(ann)])
    assert rc == 1 and "over the limit" in capsys.readouterr().out
    monkeypatch.setenv("FPSIAM_MAX_IMAGE_PIXELS", "nonsense")
    one_line_error(capsys, ["data", "stats", str(folder)], "FPSIAM_MAX_IMAGE_PIXELS")


def test_dangling_symlink_is_refused_when_the_index_is_built(tmp_path):
    from fpsiam.data.frames import open_frames
    from fpsiam.errors import FpsiamError

    (tmp_path / "v").mkdir()
    os.symlink(tmp_path / "gone.jpg", tmp_path / "v" / "0001.jpg")
    with pytest.raises(FpsiamError, match=r"0001\.jpg: a symbolic link to a missing file"):
        open_frames(tmp_path)


def test_pickle_checkpoint_message_keeps_the_reason(tmp_path):
    from fpsiam.errors import FpsiamError
    from fpsiam.train.checkpoint import load_checkpoint

    evil = tmp_path / "ckpt.pt"
    torch.save({"model": {}, "payload": os.system}, evil)  # noqa: S605 - never called: the load refuses it
    with pytest.raises(FpsiamError, match=r"pickled Python objects \(posix.system\)"):
        load_checkpoint(evil)


def test_categories_must_be_a_list(tmp_path, capsys):
    ann = tmp_path / "a.json"
    ann.write_text(json.dumps({"images": [], "annotations": [], "categories": "polyp"}))
    one_line_error(capsys, ["data", "split", str(ann), "--by", "image", "-o", str(tmp_path / "s")],
                   "'categories' must be a list")  # fmt: skip


def test_decoder_internals_are_cut_from_messages():
    e = RuntimeError(
        "Not a JPEG file: starts with 0x6e 0x6f\nException raised from decode_jpeg at /__w/vision/"
        "torchvision/csrc/io/image/cpu/decode_jpeg.cpp:123 (most recent call first):\nframe #0: c10::"
    )
    assert reason(e) == "Not a JPEG file: starts with 0x6e 0x6f"


def test_os_errors_become_one_line_with_advice(tmp_path, capsys, monkeypatch):
    assert "disk is full" in os_error_line(OSError(errno.ENOSPC, "No space left on device", "/x/ckpt.pt"))
    worker = PermissionError(
        "Caught PermissionError in DataLoader worker process 0.\nOriginal Traceback (most "
        "recent call last):\n  ...\nPermissionError: [Errno 13] Permission denied: '/d/1.jpg'"
    )
    assert os_error_line(worker) == "PermissionError: [Errno 13] Permission denied: '/d/1.jpg'"
    import fpsiam.fileio as F

    synth = synth_split(tmp_path / "s", SynthOptions(videos=2, frames=2, width=64, height=56, mp4=False))

    def full(path):  # the disk fills while the converted json is written
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(F, "_fsync", full)
    out = tmp_path / "out"
    out.mkdir()
    one_line_error(capsys, ["data", "convert", "--format", "coco", str(synth["train"]), "-o", str(out / "c.json")],
                   "disk is full")  # fmt: skip
    assert os.listdir(out) == []  # nothing half-written


@pytest.mark.skipif(as_nobody() is None, reason="needs root to drop to another user")
def test_permission_denied_for_another_user(synth, tmp_path):
    for folder in [*tmp_path.parents[:2], tmp_path, *Path(synth["train"]).parents[:2]]:  # pytest's are 0700
        folder.chmod(0o755)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    secret = tmp_path / "secret.json"
    secret.write_text(Path(synth["train"]).read_text())
    secret.chmod(0o600)
    env = {**os.environ, "HOME": str(tmp_path), "MPLCONFIGDIR": str(tmp_path / "mpl")}
    for argv, expect in (
        (["data", "convert", "--format", "coco", str(synth["train"]), "-o", str(locked / "c.json")], str(locked)),
        (["data", "split", str(secret), "--by", "image", "-o", str(tmp_path / "x")], str(secret)),
        (["pretrain", "configs/fpsiam_r18_cpu.yaml", "--data", str(synth["frames"]), "-o", str(locked / "run")],
         str(locked)),
    ):  # fmt: skip
        proc = subprocess.run([*as_nobody(), sys.executable, "-m", "fpsiam", *argv], capture_output=True, text=True,
                              env=env, cwd=Path(__file__).parents[1])  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr and expect in proc.stderr, proc.stderr
    assert os.listdir(locked) == []


def test_report_embeds_only_its_own_images_and_table_md_is_escaped(tmp_path, capsys):
    from PIL import Image

    outside = tmp_path / "secret.png"
    Image.new("RGB", (4, 4)).save(outside)
    out = tmp_path / "exp"
    out.mkdir()
    results = {
        "title": "t --> <script>alert(1)</script>",
        "runs": [{"arm": "<b>x</b>|y", "detector": "retinanet", "seed": 0, "status": "done",
                  "metrics": {"mAP": 0.1, "AP50": 0.2, "AP75": 0.05}, "samples": [{"png": "../secret.png"}]}],
    }  # fmt: skip
    (out / "results.json").write_text(json.dumps(results))
    assert main(["report", str(out / "results.json")]) == 0
    html = (out / "report.html").read_text()
    assert "outside the report" in html and base64.b64encode(outside.read_bytes()).decode() not in html
    table = (out / "table.md").read_text()
    assert "<script>" not in table and "<b>" not in table and "&lt;b&gt;x&lt;/b&gt;\\|y" in table
    assert table.splitlines()[0].count("-->") == 1  # the title cannot end the comment early


def test_file_names_outside_the_images_root_are_refused_unless_allowed(synth, tmp_path, capsys, monkeypatch):
    """An absolute or '..' file_name cannot make any command read files elsewhere; --allow-outside-root (any
    position) or FPSIAM_ALLOW_OUTSIDE_ROOT=1 lets a trusted json through."""
    from fpsiam.data.cocojson import escapes_root
    from fpsiam.detect.predict import _coco_source
    from fpsiam.errors import FpsiamError

    data = json.loads(synth["train"].read_text())
    first = data["images"][0]["file_name"]
    hostile = tmp_path / "jsons"
    hostile.mkdir()
    cases = {
        "absolute": str((synth["train"].parent / first).resolve()),
        "climbing": f"{Path(first).parts[0]}/../{first}",  # the same file, but by climbing
    }
    info = {"images_root": os.path.relpath(synth["train"].parent, hostile)}  # the other names stay valid
    for kind, name in cases.items():
        ann = hostile / f"{kind}.json"
        images = [{**data["images"][0], "file_name": name}] + data["images"][1:]
        ann.write_text(json.dumps({**data, "images": images, "info": info}))
        for argv in (
            ["data", "check", str(ann)],
            ["data", "split", str(ann), "--by", "image", "-o", str(tmp_path / "split")],
            ["data", "convert", "--format", "coco", str(ann), "-o", str(tmp_path / "c.json")],
            ["detect", "train", "configs/retinanet_r18_fpn_cpu.yaml", "--train", str(ann), "--val", str(ann),
             "-o", str(tmp_path / "det")],
            ["gradcam", "random", str(ann), "-o", str(tmp_path / "cam")],
            ["probe", "random", "--ann", str(ann)],
            ["pretrain", "configs/fpsiam_r18_cpu.yaml", "--data", str(ann), "-o", str(tmp_path / "pre")],
        ):  # fmt: skip
            one_line_error(capsys, argv, str(ann), "images[0].file_name", "--allow-outside-root")
        with pytest.raises(FpsiamError, match=r"images\[0\]\.file_name"):
            _coco_source(ann, None)
        assert not any((tmp_path / d).exists() for d in ("split", "c.json", "det", "cam", "pre"))
        # trusted: the flag after the subcommand, or the environment variable
        assert main(["data", "check", str(ann), "--no-decode", "--allow-outside-root"]) == 0, capsys.readouterr()
        assert os.environ.get("FPSIAM_ALLOW_OUTSIDE_ROOT") is None  # main() restored the environment
        monkeypatch.setenv("FPSIAM_ALLOW_OUTSIDE_ROOT", "1")
        assert len(_coco_source(ann, None).entries) == len(images)
        monkeypatch.delenv("FPSIAM_ALLOW_OUTSIDE_ROOT")
        # data split re-anchors a trusted json: its output is contained and resolves to the same files
        argv = ["data", "split", str(ann), "--by", "image", "-o", str(tmp_path / "ok"), "--allow-outside-root"]
        assert main(argv) == 0
        for part in (tmp_path / "ok").glob("*.json"):
            assert all(escapes_root(im["file_name"]) is None for im in json.loads(part.read_text())["images"])
            assert main(["data", "check", str(part), "--no-decode"]) == 0
        capsys.readouterr()
        for part in (tmp_path / "ok").glob("*.json"):
            part.unlink()
    for name in ("C:\\Windows\\x.png", "\\\\server\\share\\x.png", "a/../../x.png", "a\\..\\x.png", "/etc/x.png"):
        assert escapes_root(name), name
    assert escapes_root("frames/v..1/0001.jpg") is None and escapes_root("..hidden.jpg") is None
    bad_root = hostile / "root.json"
    bad_root.write_text(json.dumps({**data, "info": {"images_root": 7}}))
    one_line_error(capsys, ["data", "check", str(bad_root)], str(bad_root), "info.images_root")
