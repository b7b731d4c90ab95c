"""The ``fpsiam`` command: thin, one function per subcommand.

Each ``cmd_*`` function parses nothing itself: it calls the module that does the job and prints what
it returns. A :class:`FpsiamError` becomes one line on stderr and exit status 2; no traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import os
import sys
from pathlib import Path

from fpsiam import __version__
from fpsiam.backbones import ARCHS
from fpsiam.data.cocojson import ALLOW_OUTSIDE_ROOT_ENV
from fpsiam.data.convert import FORMATS
from fpsiam.detect.track import TrackConfig
from fpsiam.errors import FpsiamError

# ---------------------------------------------------------------------------------------------- data


def cmd_data_convert(args: argparse.Namespace) -> int:
    from fpsiam.data.convert import ConvertOptions, convert_dataset

    options = ConvertOptions(
        clip_boxes=args.clip_boxes,
        drop_degenerate=args.drop_degenerate,
        min_area=args.min_area,
        video_pattern=args.video_pattern,
        sequences=args.sequences,
    )
    report = convert_dataset(args.format, Path(args.src), Path(args.output), args.images, options)
    print("\n".join(report.lines()))
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from fpsiam.data.check import check_annotations

    report = check_annotations(Path(args.ann), args.images, decode=not args.no_decode)
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


def cmd_data_split(args: argparse.Namespace) -> int:
    from fpsiam.data.check import label_subsets, split_annotations

    if args.labels:
        if args.by == "list":
            raise FpsiamError("--labels draws nested subsets by video or by image; use --by video or --by image")
        written = label_subsets(Path(args.ann), Path(args.output), args.labels, args.seed, args.by, args.images)
        for fraction, path in written.items():
            print(f"{100 * fraction:g} %: {path}")
        return 0

    paths = split_annotations(
        Path(args.ann),
        Path(args.output),
        by=args.by,
        fractions=tuple(args.fractions),
        seed=args.seed,
        lists=args.list,
        images=args.images,
    )
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def cmd_data_stats(args: argparse.Namespace) -> int:
    from fpsiam.data.frames import open_frames
    from fpsiam.data.stats import compute_stats

    source = open_frames(args.src, stride=args.stride, images=args.images)
    stats = compute_stats(source, max_frames=args.max_frames, seed=args.seed)
    print(f"frames: {stats.frames}")
    print("mean: " + ", ".join(f"{v:.4f}" for v in stats.mean))
    print("std:  " + ", ".join(f"{v:.4f}" for v in stats.std))
    print(
        f"(config: --set data.mean=[{','.join(f'{v:.4f}' for v in stats.mean)}] "
        f"--set data.std=[{','.join(f'{v:.4f}' for v in stats.std)}])"
    )
    return 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    from fpsiam.data.synthetic import SynthOptions, generate

    summary = generate(
        Path(args.output),
        SynthOptions(
            videos=args.videos,
            frames=args.frames,
            seed=args.seed,
            width=args.width,
            height=args.height,
            mp4=not args.no_mp4,
        ),
    )
    print("\n".join(summary.lines()))
    return 0


# ---------------------------------------------------------------------------------------------- pretraining


def cmd_pretrain(args: argparse.Namespace) -> int:
    from fpsiam.config import PretrainConfig, load_config

    overrides = list(args.set)
    if args.data:
        overrides.append(f"data.source={args.data}")
    cfg = load_config(PretrainConfig, args.config, overrides)
    from fpsiam.ssl.pretrain import pretrain  # torch & co. only once the config is known to be good

    run_dir = Path(args.output) if args.output else Path("runs") / "pretrain" / Path(args.config).stem
    result = pretrain(cfg, run_dir, resume=args.resume, allow_config_change=args.allow_config_change)
    if result.checkpoint is not None:
        print(f"checkpoint: {result.checkpoint}")
        print(f"backbone:   {result.backbone}")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from fpsiam.config import ProbeConfig, _check_range
    from fpsiam.fileio import write_json

    cfg = ProbeConfig(ann=args.ann, images=args.images, test=args.test, holdout=args.holdout, mode=args.mode,
                      size=args.size, seeds=list(args.seeds), bn=args.bn, level=args.level)  # fmt: skip
    for key in ("holdout", "size"):  # the config's own ranges
        _check_range(key, getattr(cfg, key), "fpsiam probe", f"--{key}")
    out = Path(args.output) if args.output else None
    if out is not None and not out.parent.is_dir():
        raise FpsiamError(f"{out}: its folder does not exist; create it or pass another -o")
    from fpsiam.ssl.probe import markdown_table, run_probe

    rows = run_probe(cfg, args.backbones, arch=args.arch, weights_file=args.weights_file)
    print(markdown_table(rows))
    if out is not None:
        write_json(out, {"probe": dataclasses.asdict(cfg), "arch": args.arch, "rows": rows})
        print(f"probe: {out}")
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from fpsiam.weights import extract

    written = extract(Path(args.checkpoint), Path(args.output), to=args.to, source=args.source, pth=args.pth)
    for path in written:
        print(path)
    if args.to == "detectron2":
        from fpsiam.weights import checkpoint_card, detectron2_lines

        card = checkpoint_card(Path(args.checkpoint), "") if args.source == "fpsiam" else {}
        print("detectron2 needs these config lines for torchvision-layout weights (else the features are wrong):")
        print("\n".join(f"  {line}" for line in [f"MODEL.WEIGHTS: {written[0]}", *detectron2_lines(card)]))
    return 0


# ---------------------------------------------------------------------------------------------- detection


def cmd_detect_train(args: argparse.Namespace) -> int:
    from fpsiam.config import DetectConfig, load_config

    overrides = list(args.set)
    for key, value in (("data.train", args.train), ("data.val", args.val), ("data.images", args.images),
                       ("model.backbone", args.backbone)):  # fmt: skip
        if value:
            overrides.append(f"{key}={value}")
    cfg = load_config(DetectConfig, args.config, overrides)
    from fpsiam.detect.train import train_detector

    run_dir = Path(args.output) if args.output else Path("runs") / "detect" / Path(args.config).stem
    result = train_detector(cfg, run_dir, resume=args.resume, allow_config_change=args.allow_config_change)
    if result.last_model is not None:
        for name, row in (("best", result.best), ("last", result.last)):
            print(f"{name} (epoch {row.get('epoch')}): mAP {row.get('mAP', float('nan')):.4f} "
                  f"AP50 {row.get('AP50', float('nan')):.4f} AP75 {row.get('AP75', float('nan')):.4f}")  # fmt: skip
        print(f"models: {result.best_model} {result.last_model}")
    return 0


def cmd_detect_eval(args: argparse.Namespace) -> int:
    from fpsiam.detect.engine import evaluate_file

    out = Path(args.output) if args.output else Path(args.model).with_suffix(".metrics.json")
    m = evaluate_file(args.model, args.ann, args.images, out, batch_size=args.batch_size, device=args.device,
                      fixed_threshold=args.threshold)  # fmt: skip
    c = m["coco"]
    print("  ".join(f"{k} {c[k]:.4f}" for k in ("mAP", "AP50", "AP75", "APs", "APm", "APl", "AR100")))
    for name in ("at_best_f1", "at_fixed"):
        b = m["clinical"][name]
        if b:
            print(f"{name}: threshold {b['threshold']:.3f} precision {b['precision']} recall {b['recall']} "
                  f"F1 {b['f1']} FP/frame {b['fp_per_frame']:.3f}")  # fmt: skip
    s = m["speed"]
    print(f"speed: model {s['model_images_per_s']:.1f} img/s, whole predict path {s['predict_images_per_s']:.1f} img/s "
          f"({s['device']})")  # fmt: skip
    print(f"metrics: {out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from fpsiam.detect.predict import predict_source
    from fpsiam.detect.track import TrackConfig

    smooth = None
    if args.smooth:
        smooth = TrackConfig(iou=args.track_iou, k=args.track_k, n=args.track_n, hold=args.track_hold)
    s = predict_source(args.model, args.source, args.output, score_threshold=args.score_threshold,
                       batch_size=args.batch_size, device=args.device, smooth=smooth, backend=args.backend,
                       write_video=not args.no_video, max_frames=args.max_frames, images=args.images)  # fmt: skip
    fps = {k: f"{s[k]:.1f}" if s.get(k) is not None else "-" for k in ("model_fps", "end_to_end_fps")}
    print(f"{s['frames']} frames: model {fps['model_fps']} FPS, end-to-end {fps['end_to_end_fps']} FPS, dropped "
          f"{s['dropped_frames']}; {s['end_reason']}")  # fmt: skip
    print(f"outputs: {args.output}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from fpsiam.detect.export import export_model

    print(export_model(args.model, args.format, args.output, opset=args.opset, size=args.size))
    return 0


def cmd_gradcam(args: argparse.Namespace) -> int:
    from fpsiam.explain.gradcam import gradcam_command

    summary = gradcam_command(
        args.model, args.input, Path(args.output), ann=args.ann, images=args.images, arch=args.arch,
        max_images=args.max_images, mode=args.mode, score_threshold=args.score_threshold, size=args.size,
    )  # fmt: skip
    print(f"{len(summary.get('overlays', []))} overlays in {args.output}")
    energy = summary.get("energy")
    if energy and energy.get("n_frames"):
        e = energy
        print(f"CAM energy in true boxes: {e['mean_energy_in_box']:.3f} (chance {e['mean_box_area_fraction']:.3f}), "
              f"peak inside a box: {e['peak_in_box_rate']:.2f}, over {e['n_frames']} frames")  # fmt: skip
    return 0


# ---------------------------------------------------------------------------------------------- the study


def cmd_experiment(args: argparse.Namespace) -> int:
    from fpsiam.config import ExperimentConfig, load_config

    cfg = load_config(ExperimentConfig, args.config, args.set)
    from fpsiam.experiment import run_experiment

    out = Path(args.output) if args.output else Path("runs") / "experiments" / Path(args.config).stem
    command = " ".join(["fpsiam", *sys.argv[1:]])
    run_experiment(cfg, out, where=args.config, command=command, report_only=args.report_only)
    print(f"results: {out / 'results.json'}")
    print(f"report:  {out / 'report.html'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from fpsiam.fileio import atomic_open, read_json
    from fpsiam.report.html import write_report
    from fpsiam.report.markdown import markdown_report
    from fpsiam.report.schema import check_results

    src = Path(args.results)
    results = check_results(read_json(src, "the results.json an experiment wrote"), str(src))
    html = Path(args.output) if args.output else src.with_name("report.html")
    md = Path(args.markdown) if args.markdown else html.with_name("table.md")  # beside the report: -o keeps both out
    try:  # a hand-edited or foreign results.json: values of the wrong type surface here
        text = markdown_report(results)
        write_report(results, html)
    except (TypeError, KeyError, ValueError, AttributeError, IndexError) as e:
        raise FpsiamError(
            f"{src}: not a well-formed results.json ({type(e).__name__}: {str(e)[:120]}); rebuild it by rerunning "
            "its fpsiam experiment command"
        ) from None
    with atomic_open(md, "w", encoding="utf-8") as f:
        f.write(text)
    print(text)
    print(f"report: {html}\ntable:  {md}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from fpsiam.demo import run_demo

    report = run_demo(args.output, quick=args.quick, overrides=args.set)
    print(f"report: {report}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from fpsiam import presets

    if args.config_command == "list":
        from fpsiam.backbones import BACKBONES
        from fpsiam.detect.models import DETECTORS
        from fpsiam.ssl.methods import METHODS

        print(presets.listing())
        print(f"\nmethods (model.method; an experiment's methods): {', '.join(METHODS)}")
        print(f"detectors (model.kind; an experiment's detectors): {', '.join(DETECTORS)}")
        print(f"backbones (model.backbone of a pretraining, model.arch of a detector): {', '.join(BACKBONES)}")
        print(f"data formats (fpsiam data convert --format): {', '.join(FORMATS)}")
    else:
        print(presets.show(args.config, args.set, args.kind), end="")
    return 0


# ---------------------------------------------------------------------------------------------- parser


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's example lines as written and shows each option's default (unless its help says it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default is None
            or default is False
            or default == argparse.SUPPRESS
            or (action.option_strings == [])
        ):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, list | tuple) else default
        return f"{text} (default: {shown})"


# One example per command, shown at the end of its --help (runs as written after the README's walk-through).
EXAMPLES = {
    "data convert": "fpsiam data convert --format kvasir /data/kvasir-seg -o data/kvasir/all.json",
    "data check": "fpsiam data check data/kvasir/all.json --images /data/kvasir-seg/images",
    "data split": "fpsiam data split data/synth/annotations.json --by video -o data/synth/split\n"
                  "  fpsiam data split data/synth/split/train.json --labels 0.1 0.25 1 -o data/synth/labels",
    "data stats": "fpsiam data stats data/synth/videos --stride 4",
    "data synth": "fpsiam data synth data/synth --videos 6 --frames 12",
    "pretrain": "fpsiam pretrain fpsiam_r18_cpu --data data/synth/frames -o runs/fpsiam_synth --set train.epochs=2\n"
                "  torchrun --nproc_per_node=4 -m fpsiam pretrain fpsiam_r50_4xb64-coslr-200e_ldpolypvideo \\\n"
                "      --data /data/LDPolypVideo/PreTrain",
    "extract": "fpsiam extract runs/fpsiam_synth -o runs/fpsiam_synth/r18_d2.pkl --to detectron2",
    "detect train": "fpsiam detect train retinanet_r18_fpn_cpu --train data/synth/split/train.json "
                    "--val data/synth/split/val.json --backbone runs/fpsiam_synth/backbone.safetensors -o runs/retina",
    "detect eval": "fpsiam detect eval runs/retina/last.safetensors --ann data/synth/split/test.json -o test.json",
    "gradcam": "fpsiam gradcam runs/retina/last.safetensors data/synth/split/test.json -o runs/cam --max-images 4",
    "experiment": "fpsiam experiment kvasir_lowlabel_cpu -o runs/lowlabel --set seeds=[0]",
    "report": "fpsiam report runs/lowlabel/results.json",
    "demo": "fpsiam demo -o demo_out",
    "detect": "fpsiam detect train --help; fpsiam detect eval --help",
    "data": "fpsiam data synth data/synth; fpsiam data check data/synth/annotations.json",
    "config list": "fpsiam config list",
}  # fmt: skip


def _finish(parser: argparse.ArgumentParser, path: str = "") -> None:
    """Give every (sub)command the shared help formatter and, where it has none, its example epilog."""
    parser.formatter_class = HelpFormatter
    if path and parser.epilog is None and path in EXAMPLES:
        parser.epilog = "example:\n  " + EXAMPLES[path]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                _finish(sub, f"{path} {name}".strip())


def add_run_flags(p: argparse.ArgumentParser, default_dir: str, resume: bool = True) -> None:
    """-o RUN_DIR, --set KEY=VALUE (repeatable) and, for training commands, --resume."""
    p.add_argument("-o", "--output", help=f"run folder (default: {default_dir})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    if resume:
        p.add_argument("--resume", action="store_true", help="continue from the run folder's newest checkpoint")
        p.add_argument("--allow-config-change", action="store_true",
                       help="with --resume: continue although settings other than logging, workers and epochs "
                       "differ from the run's (the run is then no longer an exact one)")  # fmt: skip


ALLOW_OUTSIDE_ROOT = "--allow-outside-root"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fpsiam",
        description="FPSiam self-supervised pretraining and polyp-detection transfer.",
    )
    parser.add_argument("--version", action="version", version=f"fpsiam {__version__}")
    parser.add_argument(
        ALLOW_OUTSIDE_ROOT, action="store_true",
        help="let a COCO json's file_name values be absolute or climb out of its images folder with '..' "
        "(refused by default: a json handed to you must not make fpsiam read files elsewhere; accepted "
        "anywhere on the command line; same as FPSIAM_ALLOW_OUTSIDE_ROOT=1)",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="convert, check, split, measure and synthesise polyp data")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")

    p = dsub.add_parser(
        "convert",
        help="convert a public polyp dataset to COCO json",
        description="Convert a public polyp dataset to COCO json (category 'polyp'), keeping video ids, "
        "frame indices and track ids where the source has them.",
    )
    p.add_argument("--format", required=True, choices=list(FORMATS), help="the source's format (docs/data.md)")
    p.add_argument("src", help="dataset root, annotation folder or file (see README: Data formats)")
    p.add_argument("-o", "--output", required=True, help="output COCO json")
    p.add_argument("--images", help="images folder, when it is not where the format expects it")
    p.add_argument(
        "--clip-boxes",
        action="store_true",
        help="clip boxes that overhang the image instead of failing (count reported)",
    )
    p.add_argument(
        "--drop-degenerate",
        action="store_true",
        help="drop zero/negative-area boxes instead of failing (count reported)",
    )
    p.add_argument(
        "--min-area",
        type=int,
        default=64,
        help="masks: drop connected components smaller than this many pixels (default 64)",
    )
    p.add_argument(
        "--video-pattern",
        default=None,
        help="regex with named groups (?P<video>...) and (?P<frame>...) applied to image file "
        "names, for sources that encode video and frame in the name",
    )
    p.add_argument("--sequences", default=None, metavar="CSV",
                   help="masks: a table (columns image, video[, frame]) mapping frames to video sequences "
                   "(CVC-ClinicDB); default: SRC/sequences.csv when present")  # fmt: skip
    p.set_defaults(func=cmd_data_convert)

    p = dsub.add_parser(
        "check",
        help="validate a COCO json and print a summary",
        description="Validate a COCO json (files exist and decode, sizes match, boxes inside "
        "the image with positive area, ids unique) and print a summary. Exit 1 on problems.",
    )
    p.add_argument("ann", help="COCO json")
    p.add_argument("--images", help="images folder (default: the json's info.images_root, else its folder)")
    p.add_argument("--no-decode", action="store_true", help="read image headers only, no pixel decoding (faster)")
    p.set_defaults(func=cmd_data_check)

    p = dsub.add_parser(
        "split",
        help="split a COCO json into train/val/test without leakage",
        description="Grouped split: no video (or listed group) lands in two splits.",
    )
    p.add_argument("ann", help="COCO json")
    p.add_argument(
        "--by",
        choices=["video", "image", "list"],
        default="video",
        help="video: group by video_id (default); image: per image; list: by id lists (--list)",
    )
    p.add_argument("-o", "--output", required=True, help="output folder for train.json/val.json/test.json")
    p.add_argument("--fractions", type=float, nargs=3, default=[0.7, 0.15, 0.15], metavar=("TRAIN", "VAL", "TEST"),
                   help="shares of the images (whole groups) for train, val and test")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the random draw")
    p.add_argument(
        "--list",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="with --by list: a split name and a text file of image file stems (Kvasir's train.txt)",
    )
    p.add_argument("--labels", type=float, nargs="+", metavar="FRACTION",
                   help="instead of train/val/test: nested label subsets OUT/labels<pct>.json of these fractions "
                   "(e.g. 0.1 0.25 1), each inside the next; whole videos with --by video")  # fmt: skip
    p.add_argument("--images", help="images folder the input's file names are relative to")
    p.set_defaults(func=cmd_data_split)

    p = dsub.add_parser("stats", help="per-channel mean/std of a frame source (streaming)")
    p.add_argument("src", help="folder of images, video file/folder, LDPolypVideo PreTrain folder or COCO json")
    p.add_argument("--images", help="images root when SRC is a COCO json")
    p.add_argument("--stride", type=int, default=1, help="use every n-th frame")
    p.add_argument("--max-frames", type=int, default=None, help="sample at most this many frames (random)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random draw")
    p.set_defaults(func=cmd_data_stats)

    p = dsub.add_parser("synth", help="write deterministic synthetic colonoscopy frames + COCO json + mp4")
    p.add_argument("output", metavar="OUT_DIR")
    p.add_argument("--videos", type=int, default=4, help="number of videos")
    p.add_argument("--frames", type=int, default=12, help="frames per video")
    p.add_argument("--seed", type=int, default=0, help="seed of the random draw")
    p.add_argument("--width", type=int, default=256, help="frame width in pixels")
    p.add_argument("--height", type=int, default=224, help="frame height in pixels")
    p.add_argument("--no-mp4", action="store_true", help="skip writing the mp4 videos")
    p.set_defaults(func=cmd_data_synth)

    p = sub.add_parser(
        "pretrain",
        help="self-supervised pretraining (FPSiam and its peers: fpsiam config list); runs under torchrun too",
        description="Pretrain a backbone on unlabeled frames. Same command under "
        "`torchrun --nproc_per_node=N -m fpsiam pretrain ...` for DDP. Writes config.yaml, metrics.jsonl/csv, "
        "checkpoints/ and backbone.safetensors into the run folder.",
    )
    p.add_argument("config", help="preset name (fpsiam config list) or YAML file")
    p.add_argument("--data", help="frame source (overrides data.source)")
    add_run_flags(p, "runs/pretrain/<config name>")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser(
        "probe",
        help="frozen-backbone linear + kNN probe: polyp vs mucosa crops (did pretraining learn anything?)",
        description="Score frozen backbones with a linear (logistic regression) and a kNN-20 probe of their pooled "
        "C5 (or --level C2..C4) features: polyp crops vs mucosa crops of a COCO json with boxes (or whole frames "
        "with vs without boxes, --mode frames). The held-out part is --test; without it ANN is cross-validated "
        "in folds of whole videos (each --holdout of it), so every example is scored once. Each seed redraws the "
        "mucosa crops and the folds; the table gives mean +- std over seeds.",
        epilog="example: fpsiam probe random runs/fpsiam_synth fpsiam=runs/fpsiam_synth/backbone.safetensors "
        "--ann data/synth/split/train.json --arch resnet18 -o probe.json",
    )
    p.add_argument("backbones", nargs="+", metavar="BACKBONE",
                   help="[NAME=]random | imagenet | weights file | pretraining run folder")  # fmt: skip
    p.add_argument("--ann", required=True, help="COCO json with boxes (the probe's train part, or all of it)")
    p.add_argument("--test", help="held-out COCO json (default: cross-validate ANN)")
    p.add_argument("--images", help="images root for the jsons (default: each json's images root)")
    p.add_argument("--mode", choices=["crops", "frames"], default="crops",
                   help="crops: polyp vs mucosa crops (default); frames: frames with vs without boxes")  # fmt: skip
    p.add_argument("--bn", choices=["data", "own"], default="data",
                   help="data: re-estimate each backbone's BN statistics on the probe's examples first (default, "
                   "fair to random init); own: keep the backbone's statistics")  # fmt: skip
    p.add_argument("--holdout", type=float, default=0.25,
                   help="without --test: the fraction each fold holds out (0.25: 4 folds)")  # fmt: skip
    p.add_argument("--size", type=int, default=128, help="examples resized to SIZE x SIZE (128)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="probe seeds (0 1 2)")
    p.add_argument("--level", choices=["c2", "c3", "c4", "c5"], default="c5",
                   help="the pooled ResNet stage probed: c5 (default, what a classifier sees) or c2..c4 (what a "
                   "detector's FPN also reads)")  # fmt: skip
    p.add_argument("--arch", choices=ARCHS,
                   help="architecture of random/imagenet; weights files must match it (default: each file's own; "
                   "random/imagenet resnet50)")  # fmt: skip
    p.add_argument("--weights-file", help="offline copy of torchvision's ImageNet weights (for 'imagenet')")
    p.add_argument("-o", "--output", help="also write the rows as json here")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser(
        "extract",
        help="pretraining checkpoint -> backbone weights (torchvision / mmdet / detectron2 keys)",
        description="Extract the ResNet backbone of a pretraining checkpoint (or run folder: its newest "
        "checkpoint) as torchvision-keyed safetensors, or in MMDetection / detectron2 layout.",
    )
    p.add_argument("checkpoint", help="checkpoint file or run folder")
    p.add_argument("-o", "--output", required=True, help="output file")
    p.add_argument("--to", choices=["torchvision", "mmdet", "detectron2"], default="torchvision",
                   help="the key layout (and file type) of the output")  # fmt: skip
    p.add_argument(
        "--from",
        dest="source",
        choices=["fpsiam", "mmselfsup"],
        default="fpsiam",
        help="mmselfsup: a checkpoint of the reference implementation (keys backbone.*)",
    )
    p.add_argument("--pth", action="store_true", help="also write a .pth next to the safetensors file")
    p.set_defaults(func=cmd_extract)

    detect = sub.add_parser("detect", help="train and evaluate polyp detectors (Faster R-CNN, RetinaNet)")
    dsub = detect.add_subparsers(dest="detect_command", required=True, metavar="DETECT_COMMAND")
    p = dsub.add_parser(
        "train",
        help="fine-tune a detector with the paper's recipe",
        description="Fine-tune Faster R-CNN / RetinaNet with the paper's recipe (docs/detection.md) from a random, "
        "ImageNet or self-supervised "
        "backbone; evaluates the val set every epoch; keeps best.safetensors and last.safetensors. "
        "Same command under torchrun for DDP.",
    )
    p.add_argument("config", help="preset name (fpsiam config list) or YAML file")
    p.add_argument("--train", help="training COCO json (overrides data.train)")
    p.add_argument("--val", help="validation COCO json (overrides data.val)")
    p.add_argument("--images", help="images root for both jsons")
    p.add_argument("--backbone", help="random | imagenet | WEIGHTS file from `fpsiam extract`")
    add_run_flags(p, "runs/detect/<config name>")
    p.set_defaults(func=cmd_detect_train)

    p = dsub.add_parser("eval", help="COCO + clinical metrics of a saved detector",
                        description="Evaluate a model file (best/last.safetensors) on a COCO json: COCO bbox "
                        "metrics (pycocotools), per-frame clinical metrics, per-polyp metrics when the json has "
                        "video/track ids, and speed. Writes metrics json + COCO results json.")  # fmt: skip
    p.add_argument("model", help="model file written by `fpsiam detect train`")
    p.add_argument("--ann", required=True, help="COCO json to evaluate on")
    p.add_argument("--images", help="images root (default: the json's info.images_root, else its folder)")
    p.add_argument("-o", "--output", help="metrics json (default: MODEL.metrics.json)")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--score-threshold", "--threshold", dest="threshold", type=float, default=0.5,
                   help="fixed score threshold for the clinical metrics")  # fmt: skip
    p.set_defaults(func=cmd_detect_eval)

    p = sub.add_parser(
        "predict",
        help="run a detector on images, a folder, a COCO json, a video or a live stream",
        description="Detect polyps in SOURCE: an image, a folder of images, a COCO json (boxes not needed), a video "
        "file (mp4/avi/mkv/mov) or a stream PyAV opens (rtsp://, http(s)://, a capture device, '-' for stdin). "
        "Video is streamed (decode, inference and encoding overlap; memory does not grow with its length). Writes "
        "OUT/predictions.json (COCO results), OUT/frames.jsonl (one line per frame), OUT/annotated.mp4 (video) and "
        "OUT/summary.json (frames, model vs end-to-end FPS, dropped frames). A source that ends mid-way still "
        "leaves complete files of the frames processed.",
        epilog="example: fpsiam predict runs/retina/last.safetensors procedure.mp4 -o out/procedure --smooth",
    )
    p.add_argument("model", help="detector file (last.safetensors), or its ONNX / TorchScript export")
    p.add_argument("source", help="image, folder, COCO json, video file, stream URL or device")
    p.add_argument("-o", "--output", required=True, help="output folder (its parent must exist)")
    p.add_argument("--score-threshold", type=float, default=None,
                   help="report boxes scoring at least this (default: the model file's, 0.5 unless set)")  # fmt: skip
    p.add_argument("--smooth", action="store_true",
                   help="video: track boxes over frames and report a polyp once found in k of n frames (temporal "
                   "smoothing against flicker)")  # fmt: skip
    track = TrackConfig()  # the defaults live there (chosen by measurement: benchmarks/README.md)
    p.add_argument("--track-iou", type=float, default=track.iou, help="--smooth: IoU that continues a track")
    p.add_argument("--track-k", type=int, default=track.k, help="--smooth: matched in k ...")
    p.add_argument("--track-n", type=int, default=track.n, help="--smooth: ... of the last n frames before reported")
    p.add_argument("--track-hold", type=int, default=track.hold,
                   help="--smooth: frames a reported polyp is still reported when missed")  # fmt: skip
    p.add_argument("--backend", choices=["auto", "torch", "onnxruntime", "torchscript"], default="auto",
                   help="auto: by the model file's type")  # fmt: skip
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=4, help="frames per forward pass")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    p.add_argument("--no-video", action="store_true", help="do not write the annotated video")
    p.add_argument("--images", help="images root of a COCO json SOURCE (default: the json's images root)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "export",
        help="export a detector to ONNX or TorchScript (with the metadata inference needs)",
        description="Write a detector file as ONNX (runs in ONNX Runtime / TensorRT) or TorchScript. The export "
        "takes one RGB image in 0..1 at its own size (resize, normalisation and padding are inside), returns "
        "boxes, scores and labels, and carries the architecture, input size, mean/std and score threshold as "
        "metadata. `fpsiam predict FILE.onnx` runs it.",
        epilog="example: fpsiam export runs/retina/last.safetensors --format onnx -o runs/retina/model.onnx",
    )
    p.add_argument("model", help="detector file written by `fpsiam detect train`")
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx", help="the export's format")
    p.add_argument("-o", "--output", help="output file (default: beside the model)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="ONNX: a fixed input size (default: any)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "gradcam",
        help="Grad-CAM / EigenCAM of a detector's detections or of a backbone alone",
        description="Overlay class-activation maps on frames. MODEL: a detector file (Grad-CAM on its own "
        "detections for Faster R-CNN, EigenCAM for RetinaNet), or a backbone (weights file, 'random', "
        "'imagenet': EigenCAM of layer4, the paper's view). INPUT: an image, a folder or a COCO json; with true "
        "boxes, the share of CAM energy inside them is written to OUT_DIR/cam_energy.json.",
    )
    p.add_argument("model", help="detector file, backbone weights file, 'random' or 'imagenet'")
    p.add_argument("input", help="image, folder of images, or COCO json")
    p.add_argument("-o", "--output", default="gradcam", help="output folder (default: gradcam)")
    p.add_argument("--ann", help="COCO json with true boxes for the frames of a folder INPUT")
    p.add_argument("--images", help="images root for a COCO json INPUT")
    p.add_argument("--arch", choices=ARCHS, default="resnet50",
                   help="backbone architecture (backbone MODELs only)")  # fmt: skip
    p.add_argument("--max-images", type=int, default=16, help="at most this many frames (0: all)")
    p.add_argument("--mode", choices=["auto", "gradcam", "eigencam"], default="auto",
                   help="auto: Grad-CAM for Faster R-CNN detections, EigenCAM for RetinaNet and backbones")  # fmt: skip
    p.add_argument("--score-threshold", type=float, default=0.3, help="detections explained (detector MODELs)")
    p.add_argument("--size", type=int, default=None, help="resize frames to fit SIZE (480: the detection input)")
    p.set_defaults(func=cmd_gradcam)

    p = sub.add_parser(
        "experiment",
        help="the whole study: pretrain -> fine-tune -> evaluate -> report.html (resumable)",
        description="Run every arm (self-supervised methods, random/ImageNet init, external weights) x "
        "detector x seed, each stage in its own run folder; rerunning skips finished stages and resumes "
        "interrupted ones. Writes OUT/results.json and OUT/report.html.",
    )
    p.add_argument("config", help="experiment preset name (fpsiam config list) or YAML file")
    add_run_flags(p, "runs/experiments/<config name>", resume=False)  # reruns always resume
    p.add_argument("--report-only", action="store_true",
                   help="run no stage: write results.json, report.html and table.md from the stages finished so "
                   "far (the others marked pending); safe while the study is running")  # fmt: skip
    p.set_defaults(func=cmd_experiment)

    p = sub.add_parser(
        "report",
        help="rebuild report.html and the Markdown table (table.md) from an experiment's results.json",
    )
    p.add_argument("results", help="results.json written by fpsiam experiment / fpsiam demo")
    p.add_argument("-o", "--output", help="report.html to write (default: beside results.json)")
    p.add_argument("--markdown", help="Markdown table to write (default: table.md beside the report)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "demo",
        help="the whole pipeline on built-in synthetic colonoscopy data (a few minutes on a CPU)",
        description="Generate synthetic colonoscopy videos, pretrain FPSiam and SimSiam, fine-tune Faster R-CNN "
        "and RetinaNet from random / SimSiam / FPSiam backbones, evaluate, and write report.html.",
    )
    p.add_argument("-o", "--output", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--quick", action="store_true", help="a few steps per stage only (a smoke test)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "config",
        help="list the YAML presets shipped with fpsiam, or show one merged with --set overrides",
        description="The presets (fpsiam/configs/ in the package) are what every CONFIG argument takes by name "
        "(fpsiam pretrain fpsiam_r18_cpu) as well as a YAML file by path.",
        epilog="examples: fpsiam config list; fpsiam config show fpsiam_r18_cpu --set train.epochs=2 > my.yaml",
    )
    csub = p.add_subparsers(dest="config_command", required=True, metavar="CONFIG_COMMAND")
    q = csub.add_parser("list", help="the preset names, by kind (pretraining, detection, experiments)")
    q.set_defaults(func=cmd_config)
    q = csub.add_parser(
        "show",
        help="a preset or YAML file merged with --set overrides, validated, as YAML",
        description="Print the effective config (the config.yaml a run folder gets) of a preset name or YAML file "
        "with --set overrides applied and validated.",
        epilog="example: fpsiam config show experiments/kvasir_cpu --set seeds=[0] > my_experiment.yaml",
    )
    q.add_argument("config", metavar="NAME_OR_PATH", help="preset name (fpsiam config list) or YAML file")
    q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    q.add_argument("--kind", choices=["pretrain", "detect", "experiment"],
                   help="the config's kind (default: read from its keys)")  # fmt: skip
    q.set_defaults(func=cmd_config)

    _finish(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    before = os.environ.get(ALLOW_OUTSIDE_ROOT_ENV)
    if ALLOW_OUTSIDE_ROOT in argv:  # a global switch, accepted after the subcommand too; workers inherit it
        argv = [a for a in argv if a != ALLOW_OUTSIDE_ROOT]
        os.environ[ALLOW_OUTSIDE_ROOT_ENV] = "1"
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FpsiamError as e:
        return fail(str(e))
    except BrokenPipeError:  # `fpsiam data check ... | head`: the reader left; stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at interpreter exit
        return 141
    except OSError as e:  # permission denied, disk full, read-only mount ... anywhere: one line naming the path
        return fail(os_error_line(e))
    except KeyboardInterrupt:
        clear_progress_bars()
        print("fpsiam: interrupted", file=sys.stderr)
        return 130
    finally:  # main() called in-process (tests, notebooks) leaves the environment as it found it
        if before is None:
            os.environ.pop(ALLOW_OUTSIDE_ROOT_ENV, None)
        else:
            os.environ[ALLOW_OUTSIDE_ROOT_ENV] = before


def clear_progress_bars() -> None:
    """Close live tqdm bars so no half-drawn bar stands above the error line."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.leave = False  # closing then erases the bar's line instead of leaving it above the message
        bar.close()


MAX_ERROR_CHARS = 600


def fail(message: str) -> int:
    """Print the one error line (a huge echoed value or path is cut in the middle) and return exit status 2."""
    clear_progress_bars()
    message = " ".join(message.split("\n"))
    if len(message) > MAX_ERROR_CHARS:
        cut = len(message) - MAX_ERROR_CHARS
        message = f"{message[:400]}... ({cut:,} characters cut) ...{message[-(MAX_ERROR_CHARS - 400) :]}"
    print(f"fpsiam: error: {message}", file=sys.stderr)
    return 2


OS_ADVICE = {
    errno.ENOSPC: "the disk is full; free space or pass another -o (nothing half-written was kept)",
    errno.EDQUOT: "the disk quota is exceeded; free space or pass another -o",
    errno.EACCES: "permission denied; check the permissions, or pass another path / -o",
    errno.EPERM: "operation not permitted; check the permissions, or pass another path / -o",
    errno.EROFS: "a read-only file system; pass an -o folder on a writable disk",
}


def os_error_line(e: OSError) -> str:
    """One line for an OS error: the path, what happened and what to do. A DataLoader worker's error arrives
    re-raised with its whole traceback as the message: its last line is the original error."""
    if e.errno is None and "Original Traceback" in str(e):
        return str(e).strip().splitlines()[-1]
    where = e.filename if e.filename is not None else "(no path)"
    return f"{where}: {OS_ADVICE.get(e.errno, e.strerror or type(e).__name__)}"


if __name__ == "__main__":
    raise SystemExit(main())
