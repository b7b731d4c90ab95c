"""The `fpsiam` command itself: help everywhere, one clear line and a non-zero exit on bad input."""

import subprocess
import sys

import pytest

from fpsiam.cli import build_parser, main


def subcommands(parser):
    for action in parser._subparsers._group_actions:
        yield from action.choices.items()


def leaves(parser, path=()):
    """Every runnable (sub)command: (its words, its parser)."""
    found = False
    for name, sub in subcommands(parser) if parser._subparsers is not None else ():
        found = True
        yield from leaves(sub, (*path, name))
    if not found:
        yield path, parser


def test_every_command_explains_itself_with_an_example_and_defaults():
    names = []
    for path, p in leaves(build_parser()):
        names.append(" ".join(path))
        assert p.description or p.format_usage(), path
        assert p.epilog and "fpsiam " in p.epilog, f"{path}: no example in --help"
        text = p.format_help()
        assert "example" in text and text.count("\n") > 5, path
        for action in p._actions:
            if action.option_strings and action.help is None and action.dest != "help":
                raise AssertionError(f"{' '.join(path)} {action.option_strings[0]}: an option without help")
    assert {"data convert", "pretrain", "detect train", "predict", "export", "probe", "config show"} <= set(names)
    help_text = dict(leaves(build_parser()))[("data", "convert")].format_help()
    assert "(default: 64)" in help_text or "(default 64)" in help_text  # defaults are shown


def test_python_m_fpsiam_is_the_same_command():
    out = subprocess.run([sys.executable, "-m", "fpsiam", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("fpsiam ")


def test_error_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["pretrain", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.yaml" in err[0] and "Traceback" not in err[0]


def test_unknown_config_key_through_the_cli(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  lamda: 0.5\n")
    assert main(["pretrain", str(cfg)]) == 2
    assert "model.lamda" in capsys.readouterr().err


def test_missing_required_argument_is_usage_error():
    with pytest.raises(SystemExit) as e:
        main(["data", "convert", "x"])
    assert e.value.code == 2


@pytest.fixture(scope="module")
def tiny_detector(tmp_path_factory):
    from fpsiam.data.synthetic import SynthOptions, generate
    from fpsiam.detect.models import build_detector, save_detector

    root = tmp_path_factory.mktemp("pred")
    generate(root / "synth", SynthOptions(videos=1, frames=6, width=80, height=64, seed=4))
    model = save_detector(build_detector("retinanet", "resnet18", min_size=64, max_size=64), root / "m.safetensors")
    return root, model


def test_predict_and_export_commands(tiny_detector, tmp_path, capsys):
    root, model = tiny_detector
    video = next((root / "synth" / "videos").glob("*.mp4"))
    assert (
        main(["predict", str(model), str(video), "-o", str(tmp_path / "p"), "--smooth", "--score-threshold", "0.01"])
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("6 frames: model ") and "end of the stream" in out
    assert {p.name for p in (tmp_path / "p").iterdir()} >= {"predictions.json", "frames.jsonl", "annotated.mp4"}
    assert main(["export", str(model), "--format", "torchscript", "-o", str(tmp_path / "m.pt")]) == 0
    assert (tmp_path / "m.pt").is_file()
    assert main(["predict", str(tmp_path / "m.pt"), str(root / "synth" / "frames"), "-o", str(tmp_path / "q"),
                 "--no-video"]) == 0  # fmt: skip
    capsys.readouterr()
    for argv, expect in (
        (["predict", str(root / "synth" / "annotations.json"), str(video), "-o", str(tmp_path / "x")], "annotations"),
        (["predict", str(model), "rtsp://127.0.0.1:9/none", "-o", str(tmp_path / "y")], "rtsp://127.0.0.1:9/none"),
        (["export", str(model), "-o", str(tmp_path / "missing" / "m.onnx")], "missing"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expect in err, err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
