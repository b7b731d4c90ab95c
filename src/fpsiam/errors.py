"""The one exception type the CLI turns into a single clear line (no traceback)."""

_WORKER_MARK = "fpsiam.errors.FpsiamError: "


class FpsiamError(Exception):
    """A problem with the user's input: the message names the file (and line or key) and what to do.

    Raised in a DataLoader worker, torch re-raises it in the main process as ``FpsiamError("Caught FpsiamError
    in DataLoader worker process 0.\\nOriginal Traceback ...")``; the message is cut back to the original one,
    so a bad image read by a worker is still one line naming the file, not a traceback.
    """

    def __init__(self, *args: object) -> None:
        text = args[0] if len(args) == 1 and isinstance(args[0], str) else ""
        if text.startswith("Caught FpsiamError") and _WORKER_MARK in text:
            args = (text.rsplit(_WORKER_MARK, 1)[1].strip(),)
        super().__init__(*args)
