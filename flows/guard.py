"""Per-entry limits: a memory budget and a time limit, checked before an entry starts and enforced
while it runs.

Before: :func:`precheck` estimates the entry's peak memory and time from the model's atom count
(a line count, without parsing) and the map's header (its grid, without reading the data), with
the cost model below, and refuses an entry the limits cannot hold with a one-line
:class:`rerefine.common.errors.LimitError`.

During: the heavy stages of an entry run in one child process per entry (:class:`StageWorker`),
whose address space is limited with ``resource.setrlimit(RLIMIT_AS)`` to its start-up size plus the
budget (an allocation beyond it raises ``MemoryError`` in numpy, numba or gemmi), and which is
killed when the entry's time runs out (numba code cannot be interrupted from a thread). The
budget holds for the entry's whole process tree: a stage may start processes of its own (the
process pool of a model refined in boxes), each of which inherits the worker's address-space
limit, so while a call runs the entry reads the resident size of the worker and all its
descendants from ``/proc`` every :data:`TREE_POLL_SECONDS` and ends the entry when their sum
exceeds the worker's start-up resident size plus the budget. Each ends the entry with a
``LimitError``, the worker and every process under it killed; the night goes on. (On a Dask
cluster the regions run in Dask's worker processes, outside the entry's tree, under the Dask
workers' own memory limits.) A child process (not ``fork``) because
numba's OpenMP threads do not survive a fork, and because Dask's worker processes may not start
``multiprocessing`` children.

The flows enter :func:`entry_guard` around one entry; stage code calls :func:`run`, which sends
the call to the entry's worker when there is one and calls it directly otherwise (CLI, tests).
Library code never sees the guard.
"""

from __future__ import annotations

import contextlib
import contextvars
import gzip
import importlib
import logging
import math
import os
import pickle
import resource
import select
import signal
import struct
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from rerefine.common.errors import LimitError, RerefineError

log = logging.getLogger(__name__)

MiB = 1024 * 1024

# ---- cost model: peak resident memory of the entry's stage worker above its start-up size.
# Per box voxel: the slope between 5ME2 in EMD-3488 tiled 2×2×2 and 3×3×3 (5.6e6 and 2.1e7 box
# voxels) of the box-bound stages' peaks, each stage alone in a worker (benchmarks/bench_scale.py
# --stages: placement 35 B, difference map 33 B, metrics 19 B per voxel), rounded up. Per atom:
# the validation stage inside `rerefine entry` on the 2×2×2 case (bench_scale --entry: 368 MB for
# 35,744 atoms, 10.3 kB; alone in a worker the 2→3 slope is 5.7 kB), rounded up. Since the
# refinement runs large models in boxes (refine/boxed.py) and the stages dropped their box-size
# float64 temporaries, the one-piece fit of bench_guard.py (130 B per voxel: the refinement's
# float64 box arrays) applies only to models refined in one piece.
# Time: benchmarks/bench_guard.py (3.8 s + 2.7e-5 s per voxel + 4.0 ms per atom, within 19 %),
# rounded up -------------------------------------------------------------------------------------

#: Peak bytes of the stage worker per voxel of the model's box (float32 maps, the model map's
#: padded transforms, the placement check's float64 spline target).
BYTES_PER_BOX_VOXEL = 40.0
#: The same for a model refined in one piece (:func:`rerefine.refine.boxed.use_boxes` false):
#: benchmarks/bench_guard.py, the nightly's stages on the three real pairs and 5ME2 tiled 2×2×2 in
#: one worker, least squares (124 B per voxel, every case within 0.3 %), rounded up.
BYTES_PER_BOX_VOXEL_ONE_PIECE = 130.0
#: Peak bytes per atom (restraint and neighbour lists, structures, validation's hydrogens).
BYTES_PER_ATOM = 11_000.0
#: Peak bytes of the stages whatever the entry (tables, FFT plans, imports on first use).
FIXED_BYTES = 80 * MiB
#: Bytes per voxel of the whole map while the entry loads it (file values + float32 copy).
BYTES_PER_MAP_VOXEL = 8.0
#: CPU seconds of the stages per atom, per box voxel and per entry (one free core: on a shared
#: machine the wall time is longer, so the pre-check refuses only what cannot fit at all).
SECONDS_PER_ATOM = 0.0045
SECONDS_PER_BOX_VOXEL = 3e-5
FIXED_SECONDS = 5.0
#: Seconds between two reads of the memory of an entry's process tree while a stage runs (a
#: spike shorter than this can pass unseen; each process stays under its own address-space limit).
TREE_POLL_SECONDS = 0.5


@dataclass(frozen=True)
class EntryLimits:
    """Per-entry limits; 0 (or less) means no limit.

    Attributes
    ----------
    memory_mb : float
        MiB the entry's computation may use beyond the worker's start-up size (``RR_ENTRY_MEMORY_MB``).
    seconds : float
        Wall seconds the entry's computation may take (``RR_ENTRY_SECONDS``).
    """

    memory_mb: float = 0.0
    seconds: float = 0.0

    @property
    def memory_bytes(self) -> int | None:
        return int(self.memory_mb * MiB) if self.memory_mb > 0 else None

    @property
    def active(self) -> bool:
        return self.memory_mb > 0 or self.seconds > 0


@dataclass(frozen=True)
class Estimate:
    """What :func:`precheck` found and estimated for one entry."""

    n_atoms: int
    map_voxels: int
    box_voxels: int
    memory_bytes: float
    seconds: float

    def as_dict(self) -> dict:
        return {"n_atoms": self.n_atoms, "map_voxels": self.map_voxels, "box_voxels": self.box_voxels,
                "memory_mb": round(self.memory_bytes / MiB, 1), "seconds": round(self.seconds, 1)}


def count_atoms(path: str | os.PathLike) -> int:
    """Atom records of a model file (mmCIF ``_atom_site`` rows or PDB ``ATOM``/``HETATM`` lines,
    gzip or not), counted line by line without parsing: lines starting with ``ATOM`` or ``HETATM``.
    An mmCIF written with its atom rows not at the line starts counts 0 (the full read decides)."""
    path = Path(path)
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    n = 0
    with (gzip.open(path, "rb") if gz else open(path, "rb")) as fh:
        for line in fh:
            if line.startswith((b"ATOM", b"HETATM")):
                n += 1
    return n


def estimate(n_atoms: int, box_voxels: int, map_voxels: int) -> tuple[float, float]:
    """Peak bytes (above the worker's start-up size) and CPU seconds of one entry by the cost
    model: the larger of loading the whole map and computing on the model's box (at
    :data:`BYTES_PER_BOX_VOXEL_ONE_PIECE` per voxel when the model is refined in one piece, else
    :data:`BYTES_PER_BOX_VOXEL`); seconds linear in atoms and box voxels."""
    from rerefine.refine.boxed import BOXED_MIN_ATOMS
    from rerefine.refine.fit_stage import FIT_MAX_VOXELS

    one_piece = n_atoms < BOXED_MIN_ATOMS and box_voxels <= FIT_MAX_VOXELS
    per_voxel = BYTES_PER_BOX_VOXEL_ONE_PIECE if one_piece else BYTES_PER_BOX_VOXEL
    compute = FIXED_BYTES + per_voxel * box_voxels + BYTES_PER_ATOM * n_atoms
    load = BYTES_PER_MAP_VOXEL * map_voxels + BYTES_PER_ATOM * n_atoms
    return max(compute, load), FIXED_SECONDS + SECONDS_PER_ATOM * n_atoms + SECONDS_PER_BOX_VOXEL * box_voxels


def _mb(nbytes: float) -> str:
    return f"{nbytes / MiB:,.0f} MiB"


def precheck(label: str, model_path, map_path, limits: EntryLimits, padding: float) -> Estimate:
    """Refuse an entry the limits cannot hold, before anything large is read.

    In order: the atom count (a line count) alone against the memory budget; the map's header;
    the model's coordinates against the map's frame
    (:func:`rerefine.flows.pipeline.check_placement`, as the load stage checks them); then the
    model's box (``padding`` Å) and the cost model.

    Returns
    -------
    Estimate
        The counts, the estimated peak memory (bytes above the worker's start-up size) and the
        estimated CPU seconds.

    Raises
    ------
    LimitError
        The estimate is above ``limits``; the message names the entry, the size and the limit.
    InputError
        Non-finite coordinates, a model outside the map, or a file that cannot be read.
    """
    from rerefine.flows.pipeline import check_placement
    from rerefine.refine import mapio, modelio

    budget = limits.memory_bytes
    n = count_atoms(model_path)
    mem_atoms = FIXED_BYTES + BYTES_PER_ATOM * n
    if budget is not None and mem_atoms > budget:
        raise LimitError(f"{label}: a model of {n:,} atoms needs about {_mb(mem_atoms)}, "
                         f"above the entry memory budget of {_mb(budget)} (RR_ENTRY_MEMORY_MB)")
    frame = mapio.read_map_header(map_path)
    map_voxels = int(math.prod(frame.shape))
    if budget is not None and BYTES_PER_MAP_VOXEL * map_voxels > budget:
        nx, ny, nz = frame.shape
        raise LimitError(f"{label}: a {nx}×{ny}×{nz} map needs about {_mb(BYTES_PER_MAP_VOXEL * map_voxels)} "
                         f"to read, above the entry memory budget of {_mb(budget)} (RR_ENTRY_MEMORY_MB)")
    xyz = modelio.atom_positions(modelio.read_model(model_path))
    n = max(n, len(xyz))
    check_placement(label, xyz, frame)
    lo, hi = mapio.box_bounds(frame, xyz, padding)
    box_voxels = int(math.prod(int(h - l) for l, h in zip(lo, hi)))
    mem, secs = estimate(n, box_voxels, map_voxels)
    est = Estimate(n, map_voxels, box_voxels, mem, secs)
    if budget is not None and mem > budget:
        raise LimitError(f"{label}: {n:,} atoms in a box of {box_voxels:,} voxels need about "
                         f"{_mb(mem)}, above the entry memory budget of {_mb(budget)} "
                         "(RR_ENTRY_MEMORY_MB)")
    if limits.seconds > 0 and secs > limits.seconds:
        raise LimitError(f"{label}: {n:,} atoms in a box of {box_voxels:,} voxels need about {secs:,.0f} CPU seconds, "
                         f"above the entry time limit of {limits.seconds:g} s (RR_ENTRY_SECONDS)")
    return est


# ---- enforcement: the entry's stage worker ---------------------------------------------------

#: Modules the worker imports before its memory limit is set (the stages' dependencies).
WORKER_MODULES = ("rerefine.flows.pipeline", "rerefine.refine.sharpen", "rerefine.refine.douse",
                  "rerefine.refine.fsc", "rerefine.refine.geometry", "rerefine.refine.crossval",
                  "rerefine.refine.validation", "rerefine.refine.realspace", "rerefine.refine.metrics",
                  "rerefine.refine.diffmap", "rerefine.refine.rigidbody")


def _send(fh, obj) -> None:
    """Write ``obj`` as one message: a pickle (protocol 5) whose contiguous array buffers go
    out of band, written straight from the arrays' memory (no copy of a map into the pickle).
    Layout: pickle length, buffer count, each buffer's length (8-byte little-endian each), the
    pickle, the buffers."""
    bufs: list = []
    data = pickle.dumps(obj, protocol=5, buffer_callback=bufs.append)
    raws = [b.raw() for b in bufs]
    fh.write(struct.pack(f"<{2 + len(raws)}Q", len(data), len(raws), *(r.nbytes for r in raws)))
    fh.write(data)
    for r in raws:
        fh.write(r)
    fh.flush()


def _recv(read_into):
    """One message of :func:`_send` read with ``read_into(memoryview) -> bool`` (False at end of
    input); the arrays are built on the received buffers, not copied again. None at end of input."""
    head = bytearray(16)
    if not read_into(memoryview(head)):
        return None
    n_data, n_bufs = struct.unpack("<QQ", head)
    sizes = bytearray(8 * n_bufs)
    if n_bufs and not read_into(memoryview(sizes)):
        return None
    data = bytearray(n_data)
    if not read_into(memoryview(data)):
        return None
    bufs = []
    for size in struct.unpack(f"<{n_bufs}Q", sizes):
        b = bytearray(size)
        if size and not read_into(memoryview(b)):
            return None
        bufs.append(b)
    return pickle.loads(data, buffers=bufs)


def _file_reader(fh):
    """``read_into`` for :func:`_recv` on a binary file object."""
    def read_into(mv: memoryview) -> bool:
        pos = 0
        while pos < len(mv):
            got = fh.readinto(mv[pos:])
            if not got:
                return False
            pos += got
        return True

    return read_into


def _vm_size() -> int:
    """This process's virtual memory size, bytes (Linux ``/proc/self/status``; 0 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _job_metadata(args) -> list:
    from rerefine.flows.pipeline import EntryJob

    return [a.metadata for a in args if isinstance(a, EntryJob)]


def serve(memory_bytes: int | None) -> None:
    """The worker's loop (run as ``python -m rerefine.flows.guard [BYTES]``): import the stage
    modules, limit the address space to its size now plus ``memory_bytes``, then answer calls
    ``(fn, args, kwargs)`` read from standard input with ``("ok", result, job metadata)``,
    ``("memory", stage)`` or ``("error", exception, traceback text)`` on standard output, until
    standard input closes. The stages' own output goes to standard error."""
    if sys.platform.startswith("linux"):  # end with the entry's process (PR_SET_PDEATHSIG = 1)
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in WORKER_MODULES:
        importlib.import_module(name)
    baseline = _vm_size()
    if memory_bytes:
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = baseline + memory_bytes
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    _send(proto_out, ("ready", baseline))
    read_into = _file_reader(proto_in)
    while True:
        try:
            call = _recv(read_into)
        except MemoryError:
            _send(proto_out, ("memory", None))
            return
        if call is None:
            return
        try:
            fn, args, kwargs = call
            del call
            reply = ("ok", fn(*args, **kwargs), _job_metadata(args))
        except MemoryError:
            reply = ("memory", None)
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the entry
            reply = ("error", exc.with_traceback(None), traceback.format_exc())
        try:
            _send(proto_out, reply)
        except MemoryError:
            _send(proto_out, ("memory", None))
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            _send(proto_out, ("error", RerefineError(f"result cannot be returned ({exc})"), ""))
        del reply


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids of every process (``/proc/PID/stat``; empty off Linux)."""
    kids: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])  # after "pid (comm) state"
            kids.setdefault(ppid, []).append(int(name))
    return kids


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (children first found first)."""
    kids = _children()
    out = [pid]
    k = 0
    while k < len(out):
        out.extend(kids.get(out[k], []))
        k += 1
    return out


def _status_bytes(pid: int, field: str) -> int:
    """A memory field of ``/proc/PID/status`` (e.g. ``VmRSS``, ``VmHWM``) in bytes; 0 when the
    process is gone or the field unknown."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _rss(pid: int) -> int:
    """A process's resident bytes now (``VmRSS``; 0 when gone or unknown)."""
    return _status_bytes(pid, "VmRSS")


def tree_rss(pid: int) -> tuple[int, int]:
    """Summed resident bytes of ``pid`` and its descendants, and how many processes that is.
    Pages shared between them (libraries) count once per process, so this errs high."""
    pids = process_tree(pid)
    return sum(_rss(p) for p in pids), len(pids)


class StageWorker:
    """One entry's child process for its heavy stages, with the entry's limits.

    Parameters
    ----------
    label : str
        The entry (it starts every message).
    limits : EntryLimits
        Memory budget (the worker's address space beyond its start-up size) and time limit
        (counted from the worker's creation, over all calls).
    """

    def __init__(self, label: str, limits: EntryLimits):
        self.label = label
        self.limits = limits
        self.deadline = time.monotonic() + limits.seconds if limits.seconds > 0 else None
        self.proc: subprocess.Popen | None = None
        self.baseline = 0
        #: resident bytes of the worker when it was ready (the tree's budget starts from it)
        self.baseline_rss = 0
        #: peak resident MiB of the worker process per stage (its region processes not included)
        self.stage_peak_mb: dict[str, float] = {}

    def _remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def _start(self, stage: str) -> None:
        cmd = [sys.executable, "-m", "rerefine.flows.guard", str(self.limits.memory_bytes or 0)]
        # few malloc arenas: their address-space reservations count against RLIMIT_AS, not memory used
        env = {**os.environ, "MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", "2")}
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.baseline = self._reply(stage)[1]
        self.baseline_rss = _rss(self.proc.pid)

    def _over_time(self, stage: str) -> LimitError:
        self.kill()
        return LimitError(f"{self.label}: stopped in the {stage} stage at the entry time limit of "
                          f"{self.limits.seconds:g} s (RR_ENTRY_SECONDS)")

    def _over_memory(self, stage: str) -> LimitError:
        self.kill()
        return LimitError(f"{self.label}: the {stage} stage needs more than the entry memory budget of "
                          f"{_mb(self.limits.memory_bytes or 0)} (RR_ENTRY_MEMORY_MB)")

    def _check_tree(self, stage: str) -> None:
        """End the entry when its process tree holds more than the worker's start-up resident
        size plus the budget."""
        budget = self.limits.memory_bytes
        if budget is None or self.proc is None:
            return
        used, n = tree_rss(self.proc.pid)
        if used > self.baseline_rss + budget:
            self.kill()
            raise LimitError(f"{self.label}: the {stage} stage needs more than the entry memory budget of "
                             f"{_mb(budget)} (RR_ENTRY_MEMORY_MB): its {n} processes held "
                             f"{_mb(used - self.baseline_rss)} beyond the worker's start")

    def _read_into(self, mv: memoryview, stage: str) -> bool:
        """Fill ``mv`` from the worker's output within the entry's time; False when it ended."""
        fd = self.proc.stdout.fileno()
        pos = 0
        while pos < len(mv):
            left = self._remaining()
            if left is not None and left <= 0:
                raise self._over_time(stage)
            wait = left
            if self.limits.memory_bytes is not None:
                wait = TREE_POLL_SECONDS if left is None else min(left, TREE_POLL_SECONDS)
            ready, _, _ = select.select([fd], [], [], wait)
            if not ready:
                if left is not None and time.monotonic() >= self.deadline:
                    raise self._over_time(stage)
                self._check_tree(stage)
                continue
            got = os.readv(fd, [mv[pos:pos + (1 << 24)]])
            if not got:
                return False
            pos += got
        return True

    def _reply(self, stage: str):
        reply = _recv(lambda mv: self._read_into(mv, stage))
        if reply is None:  # the worker died
            rc = self.proc.wait()
            self.proc = None
            if rc < 0 and -rc == signal.SIGKILL:
                raise LimitError(f"{self.label}: the {stage} stage was killed (SIGKILL; out of memory?)")
            raise RerefineError(f"{self.label}: the {stage} stage's worker process ended (exit status {rc})")
        return reply

    def call(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` in the worker; its exceptions are raised here.

        Changes ``fn`` makes to the metadata of an :class:`rerefine.flows.pipeline.EntryJob`
        argument (its warnings) are copied back to that argument.

        Raises
        ------
        LimitError
            The call ran out of the entry's time or memory (the worker is stopped).
        """
        stage = getattr(fn, "__name__", "stage").removeprefix("stage_")
        left = self._remaining()
        if left is not None and left <= 0:
            raise self._over_time(stage)
        if self.proc is None:
            self._start(stage)
        try:
            _send(self.proc.stdin, (fn, args, kwargs))
        except BrokenPipeError:
            self.close()
            raise RerefineError(f"{self.label}: the {stage} stage's worker process ended") from None
        _reset_peak_rss(self.proc.pid)
        reply = self._reply(stage)
        if self.proc is not None:
            peak = _peak_rss(self.proc.pid) / MiB
            self.stage_peak_mb[stage] = round(max(self.stage_peak_mb.get(stage, 0.0), peak), 1)
        if reply[0] == "ok":
            from rerefine.flows.pipeline import EntryJob

            for job, md in zip([a for a in args if isinstance(a, EntryJob)], reply[2]):
                job.metadata.clear()
                job.metadata.update(md)
            return reply[1]
        if reply[0] == "memory":
            raise self._over_memory(stage)
        exc, tb = reply[1], reply[2]
        if not isinstance(exc, RerefineError) and tb:
            log.error("%s: %s stage failed in the worker\n%s", self.label, stage, tb)
        raise exc

    def close(self) -> None:
        """Stop the worker (it and every process under it killed when it does not end within 5 s
        of its input closing)."""
        proc = self.proc
        if proc is None:
            return
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            return
        self.proc = None
        with contextlib.suppress(OSError):
            proc.stdout.close()

    def kill(self) -> None:
        """Kill the worker and every process under it (a stage's process pool) at once."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for pid in reversed(process_tree(proc.pid)):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
        for fh in (proc.stdin, proc.stdout):
            with contextlib.suppress(OSError):
                fh.close()


def _reset_peak_rss(pid: int) -> None:
    """Set a process's peak resident size (``VmHWM``) back to its resident size now (Linux:
    ``/proc/PID/clear_refs``; nothing elsewhere)."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def _peak_rss(pid: int) -> int:
    """A process's peak resident bytes since its last reset (``VmHWM``; 0 when unknown)."""
    return _status_bytes(pid, "VmHWM")


def stage_peaks() -> dict[str, float]:
    """Peak resident MiB of the current entry's worker (:func:`entry_guard`) per stage so far
    (the largest over calls of one stage); empty without a worker."""
    worker = _CURRENT.get()
    return dict(worker.stage_peak_mb) if worker is not None else {}


_CURRENT: contextvars.ContextVar[StageWorker | None] = contextvars.ContextVar("rerefine_stage_worker",
                                                                               default=None)


@contextlib.contextmanager
def entry_guard(label: str, limits: EntryLimits):
    """Within this block, :func:`run` sends stage calls to one :class:`StageWorker` with
    ``limits`` (none when no limit is set); the worker is stopped at the end."""
    if not limits.active:
        yield None
        return
    worker = StageWorker(label, limits)
    token = _CURRENT.set(worker)
    try:
        yield worker
    finally:
        _CURRENT.reset(token)
        worker.close()


def run(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` in the current entry's worker (:func:`entry_guard`), or here when
    there is none. ``fn`` must be a module-level function of a module without Prefect."""
    worker = _CURRENT.get()
    if worker is None:
        return fn(*args, **kwargs)
    return worker.call(fn, *args, **kwargs)


if __name__ == "__main__":
    serve(int(sys.argv[1]) or None if len(sys.argv) > 1 else None)
