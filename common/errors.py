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
    """The archive (or a mirror) could not deliver: HTTP failure, timeout, garbage answer.

    ``transient`` is True when a later attempt may succeed (timeouts, dropped connections and
    5xx answers that outlasted the HTTP client's own retries): the nightly flow retries such a
    task after a pause. A 404, a malformed answer or a corrupt file is final.
    """

    def __init__(self, message: str = "", transient: bool = False):
        super().__init__(message)
        self.transient = transient

    def __reduce__(self):  # keep ``transient`` through pickling (Dask workers)
        return (type(self), (self.args[0] if self.args else "", self.transient))


class RefinementError(RerefineError):
    """Refinement could not proceed or diverged; the input model is kept."""


class LimitError(RerefineError):
    """An entry needs more memory or time than the per-entry limits allow (``RR_ENTRY_MEMORY_MB``,
    ``RR_ENTRY_SECONDS``): refused before it starts, or stopped while it runs. Final: the same
    inputs and limits would fail again."""
