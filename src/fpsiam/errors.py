"""The one exception type the CLI turns into a single clear line (no traceback)."""


class FpsiamError(Exception):
    """A problem with the user's input: the message names the file (and line or key) and what to do."""
