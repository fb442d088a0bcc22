"""The one error hierarchy of rerefine.

Every stage raises a subclass of :class:`RerefineError` with a one-line message that
names the input and the cause; the CLI and the flows print that line (no traceback)
and record it in the database.
"""


class RerefineError(Exception):
    """Base of every error that rerefine reports as a one-line cause."""


class InputError(RerefineError):
    """Bad user or archive input: corrupt map, empty model, bad identifier, ..."""


class ArchiveError(RerefineError):
    """The archive (or a mirror) could not deliver: HTTP failure, timeout, garbage answer."""


class RefinementError(RerefineError):
    """Refinement could not proceed or diverged; the input model is kept."""
