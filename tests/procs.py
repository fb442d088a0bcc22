"""Test helpers about processes: finding what a run left behind, and processes that hold memory.

The stage worker of :mod:`rerefine.flows.guard` imports this module by name (tests put ``tests/``
on its ``PYTHONPATH``), so its functions can be sent to it as stages.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np


def processes_with(marker: str) -> list[int]:
    """Live (not zombie) processes other than this one whose environment holds the entry
    ``marker`` (e.g. ``RR_DATA_DIR=/tmp/...``): every process a run started inherits it."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if marker.encode() in (d / "environ").read_bytes().split(b"\0"):
                state = next(ln for ln in (d / "status").read_text().splitlines() if ln.startswith("State:"))
                if "Z" not in state.split()[1]:
                    out.append(int(d.name))
        except (OSError, StopIteration):
            continue
    return out


def hold(mib: int, seconds: float) -> int:
    """Keep ``mib`` MiB resident (written, so the pages are real) for ``seconds``; the MiB."""
    a = np.ones(mib * 2**20 // 8)
    time.sleep(seconds)
    return int(a.nbytes // 2**20)


def pool_holding(processes: int, mib: int, seconds: float) -> int:
    """A spawned process pool (as :func:`rerefine.refine.boxed.refine_boxed` starts) whose
    ``processes`` processes each hold ``mib`` MiB for ``seconds``; the MiB held in all."""
    with cf.ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as ex:
        return sum(ex.map(hold, [mib] * processes, [seconds] * processes))
