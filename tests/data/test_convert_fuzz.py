"""Fuzzing the annotation parsers: any text or bytes gives boxes or an FpsiamError, never another exception."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fpsiam.data.convert import (
    Box,
    ConvertOptions,
    apply_box_policy,
    decode_text,
    parse_ldpolyp_txt,
    parse_voc_xml,
    parse_yolo_txt,
)
from fpsiam.errors import FpsiamError

FUZZ = settings(max_examples=100, deadline=None)
PATH = "fuzz/annotation"


def parses_or_fails_cleanly(parse, *args) -> list[Box] | None:
    """Run a parser; only FpsiamError may escape, and its message names the file."""
    try:
        return parse(*args)
    except FpsiamError as e:
        assert PATH in str(e)
        return None


# Text made of the parsers' own vocabulary reaches deeper than uniform random text.
txt_tokens = st.sampled_from(["0", "1", "2", "-3", "12", "4.5", "nan", "inf", "x", " ", "\t", ",", "\n", "\r\n", ""])
ldpolyp_like = st.lists(txt_tokens, max_size=30).map("".join)
yolo_tokens = st.sampled_from(["0", "1", "0.5", "0.25", "1e309", "-0.1", "nan", "inf", "1.5", " ", "\n", "a"])
yolo_like = st.lists(yolo_tokens, max_size=30).map("".join)
xml_tokens = st.sampled_from(
    [
        "<annotation>",
        "</annotation>",
        "<object>",
        "</object>",
        "<bndbox>",
        "</bndbox>",
        "<size>",
        "</size>",
        "<width>",
        "</width>",
        "<height>",
        "</height>",
        "<xmin>",
        "</xmin>",
        "<ymin>",
        "</ymin>",
        "<xmax>",
        "</xmax>",
        "<ymax>",
        "</ymax>",
        "<name>",
        "</name>",
        "<trackid>",
        "</trackid>",
        "<filename>",
        "</filename>",
        "12",
        "3.5",
        "-1",
        "nan",
        "1e999",
        "polyp",
        "&amp;",
        "&bogus;",
        " ",
    ]
)
voc_like = st.lists(xml_tokens, max_size=40).map("".join)


@FUZZ
@given(st.one_of(st.text(max_size=200), ldpolyp_like))
def test_ldpolyp_txt_never_crashes(text):
    boxes = parses_or_fails_cleanly(parse_ldpolyp_txt, text, PATH)
    if boxes is not None:
        assert all(isinstance(v, int) for b in boxes for v in b[:4])


@FUZZ
@given(st.binary(max_size=200))
def test_ldpolyp_bytes_never_crash(data):
    try:
        parse_ldpolyp_txt(decode_text(data, PATH), PATH)
    except FpsiamError as e:
        assert PATH in str(e)


coords = st.integers(min_value=-(10**6), max_value=10**6)


@FUZZ
@given(st.lists(st.tuples(coords, coords, coords, coords), max_size=5), st.sampled_from(["\n", "\r\n"]))
def test_ldpolyp_valid_text_parses_to_the_boxes(boxes, newline):
    text = newline.join([str(len(boxes)), *(" ".join(map(str, b)) for b in boxes)]) + newline
    parsed = parse_ldpolyp_txt(text, PATH)
    assert [tuple(b[:4]) for b in parsed] == boxes
    assert [b.where for b in parsed] == [f"{PATH}:{n}" for n in range(2, len(boxes) + 2)]


@FUZZ
@given(st.one_of(st.text(max_size=200), yolo_like), st.integers(1, 4000), st.integers(1, 4000))
def test_yolo_txt_never_crashes(text, width, height):
    boxes = parses_or_fails_cleanly(parse_yolo_txt, text, PATH, width, height)
    if boxes is not None:
        assert all(math.isfinite(v) for b in boxes for v in b[:4])


unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 9), unit, unit, unit, unit), max_size=5), st.integers(1, 2000))
def test_yolo_valid_text_parses_to_the_boxes(rows, size):
    text = "\n".join(f"{c} {cx!r} {cy!r} {w!r} {h!r}" for c, cx, cy, w, h in rows)
    parsed = parse_yolo_txt(text, PATH, size, 2 * size)
    assert len(parsed) == len(rows)
    for box, (_, cx, cy, w, h) in zip(parsed, rows, strict=True):
        expected = ((cx - w / 2) * size, (cy - h / 2) * 2 * size, (cx + w / 2) * size, (cy + h / 2) * 2 * size)
        assert box[:4] == pytest.approx(expected, abs=1e-3)


@FUZZ
@given(st.one_of(st.text(max_size=300), voc_like, voc_like.map(lambda s: f"<annotation>{s}</annotation>")))
def test_voc_xml_never_crashes(text):
    record = parses_or_fails_cleanly(parse_voc_xml, text, PATH)
    if record is not None:
        assert all(math.isfinite(v) for b in record.boxes for v in b[:4])
        assert record.width is None or record.width > 0


@FUZZ
@given(st.binary(max_size=300))
def test_voc_bytes_never_crash(data):
    parses_or_fails_cleanly(parse_voc_xml, data, PATH)


names = st.text(alphabet=st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=12)
voc_coords = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False).map(lambda v: round(v, 2))


@FUZZ
@given(
    st.lists(st.tuples(names, voc_coords, voc_coords, voc_coords, voc_coords), max_size=4),
    st.one_of(st.none(), st.tuples(st.integers(1, 5000), st.integers(1, 5000))),
)
def test_voc_valid_xml_parses_to_the_boxes(objects, size):
    size_xml = f"<size><width>{size[0]}</width><height>{size[1]}</height></size>" if size else ""
    objs = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax>"
        "</bndbox></object>"
        for n, a, b, c, d in objects
    )
    record = parse_voc_xml(f"<annotation><filename>f.jpg</filename>{size_xml}{objs}</annotation>", PATH)
    assert record.filename == "f.jpg"
    assert (record.width, record.height) == (size if size else (None, None))
    assert [(b.label, *b[:4]) for b in record.boxes] == objects


finite_or_not = st.floats(allow_nan=True, allow_infinity=True)


@FUZZ
@given(
    st.tuples(finite_or_not, finite_or_not, finite_or_not, finite_or_not),
    st.integers(1, 5000),
    st.integers(1, 5000),
    st.booleans(),
    st.booleans(),
)
def test_box_policy_keeps_boxes_inside_or_fails_cleanly(corners, width, height, clip, drop):
    options = ConvertOptions(clip_boxes=clip, drop_degenerate=drop)
    try:
        kept = apply_box_policy(Box(*corners, where=PATH), width, height, options)
    except FpsiamError as e:
        assert PATH in str(e)
        return
    if kept is not None:
        x0, y0, x1, y1 = kept
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
