"""The shape of ``results.json`` that the report reads, checked before anything is drawn.

A results.json normally comes from ``fpsiam experiment``; ``fpsiam report`` also takes hand-edited or foreign
ones. A value of the wrong type (a list where a name belongs, text where a number belongs) is one error naming
the file and the key path, e.g. ``runs[3].metrics.mAP: expected a number, got 'high'``, instead of a crash
halfway through drawing a plot. Unknown keys are allowed (newer files may carry more).
"""

from __future__ import annotations

from typing import Any

from fpsiam.errors import FpsiamError

NUMBER = "number"
TEXT = "text"
# key -> expected kind; a dict is a nested object, a one-item list a list of that kind. None is always allowed.
RUN = {
    "arm": TEXT, "detector": TEXT, "status": TEXT, "reason": TEXT, "labels": NUMBER, "train_images": NUMBER,
    "run_dir": TEXT, "metrics": {"*": NUMBER}, "history": [{"*": NUMBER}], "clinical": {}, "speed": {},
    "samples": [{"png": TEXT}], "metrics_source": TEXT,
}  # fmt: skip
RESULTS = {
    "title": TEXT, "created": TEXT, "machine": TEXT, "command": TEXT, "runs": [RUN], "arms": [TEXT],
    "detectors": [TEXT], "label_fractions": [NUMBER], "config": {}, "gradcam": {"*": {}},
    "pretrain": {"*": {"curve": [{"*": (NUMBER, TEXT)}], "status": TEXT, "reason": TEXT}},
}  # fmt: skip
STATUSES = ("done", "failed", "skipped", "pending")  # pending: not finished yet (fpsiam experiment --report-only)


def _fail(where: str, path: str, want: str, value: Any) -> FpsiamError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return FpsiamError(f"{where}: {path}: expected {want}, got {shown}; not a results.json fpsiam wrote")


def _check(value: Any, spec: Any, where: str, path: str) -> None:
    if value is None:
        return
    if isinstance(spec, tuple):
        for option in spec:
            try:
                return _check(value, option, where, path)
            except FpsiamError:
                continue
        raise _fail(where, path, " or ".join(str(s) for s in spec), value)
    if spec == NUMBER:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(where, path, "a number", value)
    elif spec == TEXT:
        if not isinstance(value, str):
            raise _fail(where, path, "text", value)
    elif isinstance(spec, list):
        if not isinstance(value, list):
            raise _fail(where, path, "a list", value)
        for i, item in enumerate(value):
            _check(item, spec[0], where, f"{path}[{i}]")
    elif isinstance(spec, dict):
        if not isinstance(value, dict):
            raise _fail(where, path, "an object", value)
        for key, item in value.items():
            sub = spec.get(key, spec.get("*"))
            if sub is not None:
                _check(item, sub, where, f"{path}.{key}" if path else str(key))


def check_results(results: Any, where: str = "results") -> dict[str, Any]:
    """``results`` itself when it has the shape the report reads; else one FpsiamError naming the key path."""
    if not isinstance(results, dict):
        raise FpsiamError(f"{where}: not an experiment's results.json (a JSON object with a 'runs' list)")
    _check(results, RESULTS, where, "")
    for i, run in enumerate(results.get("runs") or []):
        if run.get("status") not in STATUSES:
            raise _fail(where, f"runs[{i}].status", " or ".join(STATUSES), run.get("status"))
        if not isinstance(run.get("arm"), str) or not isinstance(run.get("detector"), str):
            raise _fail(where, f"runs[{i}]", "an 'arm' and a 'detector' name", run)
    return results
