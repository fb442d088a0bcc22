"""When the numba kernels of the restraint target and the non-bonded list run threaded.

Below :data:`PARALLEL_MIN_ATOMS` atoms one evaluation takes well under a millisecond: waking
numba's worker threads (and, on a loaded machine, waiting for them to be scheduled) costs more
than the work, so the serial drivers run. Callers may force either path with ``parallel=``
(tests check that both give the same results on the real models). :func:`thread_limits` sets the
thread counts of one refinement.
"""

from __future__ import annotations

import contextlib

#: Atoms from which the threaded drivers are used (and the refinement keeps numba's threads).
PARALLEL_MIN_ATOMS = 20000


def use_parallel(n_atoms: int, parallel: bool | None = None) -> bool:
    """Whether to take a threaded driver: ``parallel`` when given, else ``n_atoms >= PARALLEL_MIN_ATOMS``."""
    if parallel is not None:
        return bool(parallel)
    return n_atoms >= PARALLEL_MIN_ATOMS


@contextlib.contextmanager
def thread_limits(n_atoms: int):
    """One BLAS thread (L-BFGS-B's small dense algebra runs 10x slower with OpenBLAS threads
    competing with numba's) and, below :data:`PARALLEL_MIN_ATOMS` atoms, one numba thread.
    Restored on exit."""
    import numba

    old = numba.get_num_threads()
    if n_atoms < PARALLEL_MIN_ATOMS:
        numba.set_num_threads(1)
    try:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # optional: without it BLAS keeps its own thread count
            threadpool_limits = None
        if threadpool_limits is None:
            yield
        else:
            with threadpool_limits(limits=1, user_api="blas"):
                yield
    finally:
        numba.set_num_threads(old)
