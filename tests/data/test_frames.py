"""Frame sources: image trees, the LDPolypVideo PreTrain layout, COCO json, video files, lists."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.io import decode_image

from fpsiam.data.frames import (
    CocoFrames,
    ConcatFrames,
    FrameSource,
    ImageFolderFrames,
    VideoFrames,
    frame_index_nbytes,
    open_frames,
)
from fpsiam.errors import FpsiamError

# ---------------------------------------------------------------------------------------------- fixtures


def colour(i: int) -> tuple[int, int, int]:
    """A distinct colour for frame ``i``, so decoded frames are identifiable."""
    return ((37 * i) % 256, (255 - 23 * i) % 256, (91 + 57 * i) % 256)


def write_image(path: Path, i: int = 0, size: tuple[int, int] = (8, 6)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".tif": "TIFF"}[path.suffix.lower()]
    Image.new("RGB", size, colour(i)).save(path, fmt)


def write_video(path: Path, frames: int = 30, size: tuple[int, int] = (64, 48), codec: str = "libx264") -> None:
    """A small video whose frame ``i`` is a solid colour plus a bar whose length encodes ``i``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            stream.options = {"g": "8", "bf": "2"}  # several keyframes and B-frames: seeking is exercised
        for i in range(frames):
            a = np.empty((h, w, 3), np.uint8)
            a[:] = colour(i)
            a[: h // 4, : (i % 8 + 1) * (w // 8)] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def sequential_decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@pytest.fixture
def video(tmp_path: Path) -> Path:
    path = tmp_path / "clip.mp4"
    write_video(path)
    return path


def hwc(frame: torch.Tensor) -> np.ndarray:
    return frame.permute(1, 2, 0).numpy()


# ---------------------------------------------------------------------------------------------- image trees


def test_folder_tree_any_depth_natural_order(tmp_path: Path) -> None:
    for n in (10, 2, 1):
        write_image(tmp_path / "a" / "b" / f"frame{n}.jpg", n)
    write_image(tmp_path / "c" / "img_7.PNG", 7)  # extension case does not matter
    write_image(tmp_path / "top_3.bmp", 3)  # images in the root itself: video "."
    (tmp_path / "a" / "b" / "notes.txt").write_text("not an image")
    (tmp_path / "a" / "b" / "._frame5.jpg").write_bytes(b"macOS resource fork")  # hidden: skipped

    src = open_frames(tmp_path)
    assert isinstance(src, ImageFolderFrames)
    assert len(src) == 5
    assert src.video_names == [".", "a/b", "c"]
    paths = [Path(src.path_of(i)).name for i in range(len(src))]
    assert paths == ["top_3.bmp", "frame1.jpg", "frame2.jpg", "frame10.jpg", "img_7.PNG"]
    assert [src.video_index(i) for i in range(5)] == [0, 1, 1, 1, 2]
    assert [src.frame_index(i) for i in range(5)] == [3, 1, 2, 10, 7]
    frame = src.read(3)
    assert frame.dtype == torch.uint8 and frame.shape == (3, 6, 8)
    assert np.abs(frame.float().mean(dim=(1, 2)).numpy() - colour(10)).max() < 4  # JPEG: nearly exact
    assert torch.equal(src.read(0), torch.tensor(colour(3), dtype=torch.uint8).view(3, 1, 1).expand(3, 6, 8))
    assert torch.equal(src[4], src.read(4))  # a source is a map-style Dataset


def test_frame_numbers_fall_back_to_sorted_position(tmp_path: Path) -> None:
    for name in ("b.png", "a.png", "cam1_x.png"):  # not every name ends in a number
        write_image(tmp_path / "v" / name)
    for name in ("x_1.png", "y_1.png"):  # numbers, but not distinct
        write_image(tmp_path / "w" / name)
    src = open_frames(tmp_path)
    assert [Path(src.path_of(i)).name for i in range(5)] == ["a.png", "b.png", "cam1_x.png", "x_1.png", "y_1.png"]
    assert [src.frame_index(i) for i in range(5)] == [0, 1, 2, 0, 1]


def test_ldpolypvideo_pretrain_layout_and_concatenation(tmp_path: Path) -> None:
    pre = tmp_path / "PreTrain"
    for video, n in (("001", 4), ("002", 3)):
        for i in range(1, n + 1):
            write_image(pre / "VideosWithPolyps" / "Images" / video / f"{i}.jpg", i)
    for i in range(1, 6):
        write_image(pre / "VideosWithoutPolyps" / "Images" / "001" / f"{i}.jpg", i)

    src = open_frames(pre)
    assert len(src) == 12
    assert src.video_names == [
        "VideosWithPolyps/Images/001",
        "VideosWithPolyps/Images/002",
        "VideosWithoutPolyps/Images/001",
    ]
    assert [src.frame_index(i) for i in range(4)] == [1, 2, 3, 4]

    both = open_frames([pre / "VideosWithPolyps", pre / "VideosWithoutPolyps"], stride=2)
    assert isinstance(both, ConcatFrames)
    assert len(both) == 2 + 2 + 3  # every 2nd frame of each video
    assert [both.frame_index(i) for i in range(len(both))] == [1, 3, 1, 3, 1, 3, 5]
    assert [both.video_index(i) for i in range(len(both))] == [0, 0, 1, 1, 2, 2, 2]
    # both sources call a video "Images/001": the names are made unique with the source's root
    assert len(set(both.video_names)) == 3
    assert both.video_names[2].endswith("VideosWithoutPolyps/Images/001")
    assert both.path_of(5).endswith(os.path.join("VideosWithoutPolyps", "Images", "001", "3.jpg"))
    assert torch.equal(both.read(5), open_frames(pre).read(9))
    g = torch.Generator().manual_seed(0)
    assert {both.neighbour(4, 5, g) for _ in range(50)} == {5, 6}  # stays inside the last video
    assert frame_index_nbytes(both) > frame_index_nbytes(both.sources[0])


# ---------------------------------------------------------------------------------------------- COCO json


def test_coco_json_source(tmp_path: Path) -> None:
    images = tmp_path / "imgs"
    records = []
    for k, (name, vid, idx) in enumerate(
        [
            ("s2.jpg", None, None),
            ("v1_9.jpg", "v1", 9),
            ("v1_3.jpg", "v1", 3),
            ("s10.jpg", None, None),
            ("v0_a.jpg", "v0", None),
            ("v0_b.jpg", "v0", None),
        ]
    ):
        write_image(images / name, k)
        rec = {"id": k + 1, "file_name": name, "width": 8, "height": 6}
        if vid is not None:
            rec["video_id"] = vid
        if idx is not None:
            rec["frame_index"] = idx
        records.append(rec)
    ann = tmp_path / "ann" / "train.json"
    ann.parent.mkdir()
    ann.write_text(json.dumps({"images": records, "annotations": []}))

    src = open_frames(ann, images=str(images))
    assert isinstance(src, CocoFrames)
    assert src.video_names == ["v0", "v1", "s2.jpg", "s10.jpg"]  # stills are one-frame videos
    assert [Path(src.path_of(i)).name for i in range(6)] == [
        "v0_a.jpg",
        "v0_b.jpg",
        "v1_3.jpg",
        "v1_9.jpg",
        "s2.jpg",
        "s10.jpg",
    ]
    assert [src.frame_index(i) for i in range(6)] == [0, 1, 3, 9, 0, 0]
    assert src.neighbour(4, 3) == 4  # a still has no temporal neighbour
    assert {src.neighbour(2, 1) for _ in range(10)} == {3}
    assert torch.equal(src.read(3), decode_image(str(images / "v1_9.jpg")))

    # without --images the file names resolve against the json's folder, which lacks them
    with pytest.raises(FpsiamError, match="image not found"):
        open_frames(ann).read(0)


# ---------------------------------------------------------------------------------------------- videos


def test_video_random_access_equals_sequential_decode(video: Path) -> None:
    src = open_frames(video)
    assert isinstance(src, VideoFrames)
    expected = sequential_decode(video)
    assert len(src) == len(expected) == 30
    assert src.video_names == ["clip.mp4"]
    assert src.path_of(17) == f"{video}#frame 17"
    order = np.random.default_rng(0).permutation(30).tolist() + [29, 0, 1, 2, 3, 12, 11]
    for i in order:
        assert np.array_equal(hwc(src.read(i)), expected[i]), f"frame {i}"
    # the frames really are distinct (a seek that lands on the wrong frame would be caught)
    assert np.abs(hwc(src.read(3)).astype(int) - hwc(src.read(4)).astype(int)).mean() > 10


def test_video_stride_and_folder_of_videos(tmp_path: Path) -> None:
    write_video(tmp_path / "videos" / "b" / "long.mkv", frames=10)
    write_video(tmp_path / "videos" / "a.avi", frames=7, codec="mpeg4")
    src = open_frames(tmp_path / "videos", stride=3)
    assert src.video_names == ["a.avi", "b/long.mkv"]
    assert len(src) == 3 + 4
    assert [src.frame_index(i) for i in range(len(src))] == [0, 3, 6, 0, 3, 6, 9]
    expected = sequential_decode(tmp_path / "videos" / "b" / "long.mkv")
    assert np.array_equal(hwc(src.read(5)), expected[6])
    assert src.path_of(6).endswith("long.mkv#frame 9")


def test_neighbour_stays_in_video_within_k(video: Path, tmp_path: Path) -> None:
    write_video(tmp_path / "one" / "single.mp4", frames=1)
    src = ConcatFrames([open_frames(video), open_frames(tmp_path / "one")])
    g = torch.Generator().manual_seed(1)
    for i in (0, 1, 15, 28, 29):
        seen = {src.neighbour(i, 3, g) for _ in range(200)}
        assert seen == {j for j in range(max(0, i - 3), min(29, i + 3) + 1)} - {i}
    assert src.neighbour(30, 5, g) == 30  # a one-frame video: the frame itself
    assert src.neighbour(10, 0, g) == 10
    a = [src.neighbour(10, 4, torch.Generator().manual_seed(7)) for _ in range(3)]
    b = [src.neighbour(10, 4, torch.Generator().manual_seed(7)) for _ in range(3)]
    assert a == b  # reproducible with a generator
    with pytest.raises(IndexError):
        src.read(31)


def test_video_source_pickles_and_reads_in_dataloader_workers(video: Path) -> None:
    src = open_frames(video)
    first = src.read(5)  # opens a container in this process
    clone = pickle.loads(pickle.dumps(src))  # no open handle travels
    assert torch.equal(clone.read(5), first)
    loader = DataLoader(src, batch_size=None, num_workers=2, sampler=[3, 20, 7, 29, 0, 11])
    expected = sequential_decode(video)
    got = list(loader)
    for i, frame in zip([3, 20, 7, 29, 0, 11], got, strict=True):
        assert np.array_equal(hwc(frame), expected[i])
    assert torch.equal(src.read(6), torch.from_numpy(expected[6]).permute(2, 0, 1))  # parent still fine


def test_index_is_compact_numpy(tmp_path: Path) -> None:
    for v in range(3):
        for i in range(50):
            (tmp_path / f"video{v}").mkdir(exist_ok=True)
            (tmp_path / f"video{v}" / f"{i:06d}.jpg").touch()  # indexing never opens the files
    src = open_frames(tmp_path)
    assert len(src) == 150
    assert all(isinstance(a, np.ndarray) for a in (src._video, src._frame, src._names.offsets))
    # int32 video + int32 frame + int64 offset + "000123.jpg" = 26 bytes a frame, plus a few per video
    assert 150 * 26 <= frame_index_nbytes(src) < 150 * 26 + 200


# ---------------------------------------------------------------------------------------------- bad input


def test_bad_inputs_name_the_path(tmp_path: Path, video: Path) -> None:
    with pytest.raises(FpsiamError, match="no such file or folder"):
        open_frames(tmp_path / "missing")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(FpsiamError, match=r"empty: no images .* or videos"):
        open_frames(tmp_path / "empty")
    with pytest.raises(FpsiamError, match="stride"):
        open_frames(video, stride=0)
    with pytest.raises(FpsiamError, match="not a frame source"):
        open_frames(tmp_path / "empty" / "readme.txt")

    write_image(tmp_path / "mixed" / "a.jpg")
    write_video(tmp_path / "mixed" / "v.mp4", frames=2)
    with pytest.raises(FpsiamError, match="both image files and video files"):
        open_frames(tmp_path / "mixed")


def test_corrupt_image_is_named_at_read(tmp_path: Path) -> None:
    write_image(tmp_path / "v" / "1.jpg")
    (tmp_path / "v" / "2.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    src = open_frames(tmp_path)
    assert src.read(0).shape == (3, 6, 8)
    with pytest.raises(FpsiamError, match=r"2\.jpg: cannot decode the image"):
        src.read(1)


def test_truncated_video_is_named(tmp_path: Path, video: Path) -> None:
    data = video.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])  # the mp4 index (moov) is at the end: unreadable at open
    with pytest.raises(FpsiamError, match="cut.mp4: cannot read this video"):
        open_frames(cut)

    # a file that shrinks after indexing: the missing frame is named with file and frame
    mkv = tmp_path / "later.mkv"
    write_video(mkv, frames=30)
    src = open_frames(mkv)
    assert src.read(2).shape == (3, 48, 64)
    mkv.write_bytes(mkv.read_bytes()[: mkv.stat().st_size // 3])
    fresh = pickle.loads(pickle.dumps(src))  # reopens the (now shorter) file
    with pytest.raises(FpsiamError, match=r"later\.mkv#frame 29"):
        fresh.read(29)


def test_source_interface_is_abstract() -> None:
    with pytest.raises(TypeError):
        FrameSource()  # type: ignore[abstract]


# ---------------------------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_kvasir_images_as_frames(tmp_path: Path) -> None:
    root = os.environ.get("FPSIAM_KVASIR")
    if not root:
        pytest.skip("FPSIAM_KVASIR not set: point it at the Kvasir-SEG folder to read real frames")
    images = Path(root) / "images"
    src = open_frames(images, stride=100)
    assert len(src) == 10 and src.video_names == ["."]
    frame = src.read(3)
    assert frame.dtype == torch.uint8 and frame.shape[0] == 3 and min(frame.shape[1:]) > 200

    train = (Path(root) / "train.txt").read_text().split()[:5]
    ann = tmp_path / "train.json"
    ann.write_text(
        json.dumps({"images": [{"id": k, "file_name": f"{s}.jpg"} for k, s in enumerate(train)], "annotations": []})
    )
    coco = open_frames(ann, images=str(images))
    assert len(coco) == 5 and len(coco.video_names) == 5
    assert coco.read(0).shape[0] == 3
