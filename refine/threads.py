"""When the numba kernels of the restraint target and the non-bonded list run threaded.

Below :data:`PARALLEL_MIN_ATOMS` atoms one evaluation takes well under a millisecond: waking
numba's worker threads (and, on a loaded machine, waiting for them to be scheduled) costs more
than the work, so the serial drivers run. Callers may force either path with ``parallel=``
(tests check that both give the same results on the real models).
"""

from __future__ import annotations

#: Atoms from which the threaded drivers are used (and the refinement keeps numba's threads).
PARALLEL_MIN_ATOMS = 20000


def use_parallel(n_atoms: int, parallel: bool | None = None) -> bool:
    """Whether to take a threaded driver: ``parallel`` when given, else ``n_atoms >= PARALLEL_MIN_ATOMS``."""
    if parallel is not None:
        return bool(parallel)
    return n_atoms >= PARALLEL_MIN_ATOMS
