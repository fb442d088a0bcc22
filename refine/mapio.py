"""Reading, validating, boxing and writing cryo-EM maps (MRC/CCP4, gzip or not).

The in-memory form is :class:`DensityMap`: a float32 array indexed ``[ix, iy, iz]``
(C order) whatever the file's axis order (MAPC/MAPR/MAPS), plus the absolute
position of its first voxel, so that model coordinates in the deposited frame
can be compared with the map directly.

Origin conventions (MRC2014, Cheng et al. 2015, J. Struct. Biol. 192:146):
the position of voxel ``n`` is ``(NSTART + n) * voxel`` in the frame of the model.
UCSF Chimera and ChimeraX write cut-out boxes with ``NSTART = 0`` and put the box
position, in Å, in the ``ORIGIN`` header words (50-52). We honour ``ORIGIN`` as a
real-space offset when every ``NSTART`` is zero and ``ORIGIN`` is not; it need not
be a whole number of voxels. When both are set, ``NSTART`` wins (the EMDB
convention) and ``ORIGIN`` is ignored.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import tempfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import gemmi
import mrcfile
import mrcfile.utils
import numpy as np

from rerefine.common.errors import InputError

log = logging.getLogger(__name__)

#: bytes decompressed at a time when a compressed map is read to its end (:func:`_stream_box`)
STREAM_CHUNK = 1 << 24


@dataclass
class DensityMap:
    """A density map in an absolute Cartesian frame.

    Attributes
    ----------
    data : numpy.ndarray
        float32 values, shape ``(nx, ny, nz)``, C-contiguous, indexed ``[ix, iy, iz]``.
    cell : gemmi.UnitCell
        The cell spanned by ``sampling`` voxels (MRC CELLA/CELLB), Å and degrees.
    sampling : tuple of int
        Voxels per cell edge along x, y, z (MRC MX, MY, MZ).
    start : tuple of int
        Index of ``data[0, 0, 0]`` on the cell grid along x, y, z (MRC NSTART, permuted).
    origin_shift : numpy.ndarray
        Extra Cartesian offset, Å, added to every voxel position (from MRC ORIGIN).
    name : str
        Label used in messages (usually the file name).
    """

    data: np.ndarray
    cell: gemmi.UnitCell
    sampling: tuple[int, int, int]
    start: tuple[int, int, int] = (0, 0, 0)
    origin_shift: np.ndarray = field(default_factory=lambda: np.zeros(3))
    name: str = "map"
    label: str = ""

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.data.shape)

    @property
    def voxel_size(self) -> np.ndarray:
        """Voxel edge lengths along the cell axes, Å."""
        return np.array([self.cell.a, self.cell.b, self.cell.c]) / np.array(self.sampling, float)

    @property
    def is_orthogonal(self) -> bool:
        return all(abs(x - 90.0) < 1e-3 for x in (self.cell.alpha, self.cell.beta, self.cell.gamma))

    @property
    def origin(self) -> np.ndarray:
        """Cartesian position of ``data[0, 0, 0]``, Å."""
        frac = gemmi.Fractional(*(s / m for s, m in zip(self.start, self.sampling)))
        o = self.cell.orthogonalize(frac)
        return np.array([o.x, o.y, o.z]) + self.origin_shift

    @property
    def orth_matrix(self) -> np.ndarray:
        """Matrix taking grid steps (voxel units) to Cartesian Å."""
        m = np.array(self.cell.orth.mat.tolist())
        return m / np.array(self.sampling, float)[None, :]

    @property
    def extent(self) -> np.ndarray:
        """Box edge lengths, Å (orthogonal maps)."""
        return self.voxel_size * np.array(self.shape)

    def grid_coordinates(self, xyz: np.ndarray) -> np.ndarray:
        """Convert Cartesian positions (Å, shape (N, 3)) to fractional voxel indices of ``data``."""
        xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
        inv = np.linalg.inv(self.orth_matrix)
        return (xyz - self.origin) @ inv.T

    def statistics(self) -> dict:
        """Mean, standard deviation, minimum and maximum of the map values."""
        d = self.data
        return {
            "mean": float(d.mean(dtype=np.float64)),
            "sd": float(d.std(dtype=np.float64)),
            "min": float(d.min()),
            "max": float(d.max()),
        }

    def with_data(self, data: np.ndarray) -> DensityMap:
        """The same frame holding other values (e.g. a sharpened or model map)."""
        if tuple(data.shape) != self.shape:
            raise ValueError(f"shape {data.shape} does not match map {self.shape}")
        return replace(self, data=np.ascontiguousarray(data, dtype=np.float32))


def _open_mrc(path: Path):
    """Open an MRC file with mrcfile (which recognises gzip and bzip2 by their magic bytes)."""
    try:
        return mrcfile.open(str(path), mode="r", permissive=False)
    except (EOFError, OSError, zlib.error) as exc:
        raise InputError(f"{path.name}: corrupt or truncated file ({exc})") from None
    except Exception as exc:  # mrcfile raises ValueError on bad headers and short data
        raise InputError(f"{path.name}: not a readable MRC/CCP4 map ({exc})") from None


def read_map(path: str | os.PathLike, *, check_finite: bool = True) -> DensityMap:
    """Read an MRC/CCP4 map (``.mrc``, ``.map``, ``.ccp4``, optionally gzipped).

    Parameters
    ----------
    path : path-like
        Map file.
    check_finite : bool
        Reject maps holding NaN or infinite values (default). Metrics and
        refinement are undefined on them.

    Returns
    -------
    DensityMap
        Values as float32 indexed ``[x, y, z]``, with the origin handled as described
        in the module docstring.

    Raises
    ------
    InputError
        Missing file, truncated data, corrupt gzip, bad header, zero-size axis,
        non-finite values.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path.name}: map file not found")
    if path.stat().st_size < 1024:
        raise InputError(f"{path.name}: file too short for an MRC header ({path.stat().st_size} bytes)")
    mrc = _open_mrc(path)
    try:
        if mrc.data is None:
            raise InputError(f"{path.name}: map has no data block")
        raw = np.asarray(mrc.data)
        if raw.ndim != 3 or 0 in raw.shape:
            raise InputError(f"{path.name}: map is not a non-empty 3-D volume (shape {raw.shape})")
        frame, perm = _frame(mrc.header, path.name)
        # mrcfile gives (section, row, column); column is along axis axes[0], etc.
        data = np.ascontiguousarray(raw.transpose(2, 1, 0).transpose(perm), dtype=np.float32)
    finally:
        mrc.close()
    return _checked(replace(frame, data=data), path, check_finite)


def _checked(dmap: DensityMap, path: Path, check_finite: bool) -> DensityMap:
    if check_finite and not np.all(np.isfinite(dmap.data)):
        bad = int(np.size(dmap.data) - np.count_nonzero(np.isfinite(dmap.data)))
        raise InputError(f"{path.name}: map holds {bad} NaN or infinite values")
    return dmap


def _frame(h, name: str) -> tuple[DensityMap, list[int]]:
    """The frame an MRC header describes, as a :class:`DensityMap` whose ``data`` is a read-only
    zero-strided placeholder of the map's shape (no memory), and the permutation taking the
    file's (column, row, section) axes to x, y, z."""
    axes = (int(h.mapc), int(h.mapr), int(h.maps))
    if sorted(axes) != [1, 2, 3]:
        raise InputError(f"{name}: invalid axis order MAPC/MAPR/MAPS = {axes}")
    n_crs = (int(h.nx), int(h.ny), int(h.nz))
    if min(n_crs) <= 0:
        raise InputError(f"{name}: map is not a non-empty 3-D volume (shape {n_crs[::-1]})")
    perm = [axes.index(k) for k in (1, 2, 3)]  # which crs dimension is x, y, z
    shape = tuple(n_crs[p] for p in perm)
    nstart_crs = (int(h.nxstart), int(h.nystart), int(h.nzstart))
    start = tuple(nstart_crs[p] for p in perm)
    sampling = (int(h.mx), int(h.my), int(h.mz))
    if min(sampling) <= 0:
        # Some writers leave MX/MY/MZ empty; the box is then the cell.
        sampling = shape
    cella = [float(h.cella.x), float(h.cella.y), float(h.cella.z)]
    cellb = [float(h.cellb.alpha), float(h.cellb.beta), float(h.cellb.gamma)]
    if min(cella) <= 0:
        raise InputError(f"{name}: cell dimensions {cella} are not positive")
    if min(cellb) <= 0:
        cellb = [90.0, 90.0, 90.0]
    origin_words = np.array([float(h.origin.x), float(h.origin.y), float(h.origin.z)])
    label = ""
    try:
        label = b"".join(bytes(x) for x in h.label[: int(h.nlabl)]).decode("ascii", "replace").strip()
    except Exception:
        label = ""
    if not np.all(np.isfinite(origin_words)):
        origin_words = np.zeros(3)
    shift = np.zeros(3)
    if any(start) and np.any(origin_words != 0):
        log.info("%s: both NSTART %s and ORIGIN %s set; using NSTART", name, start, origin_words)
    elif not any(start) and np.any(origin_words != 0):
        shift = origin_words
    placeholder = np.broadcast_to(np.float32(0), shape)
    frame = DensityMap(data=placeholder, cell=gemmi.UnitCell(*cella, *cellb), sampling=sampling, start=start,
                       origin_shift=shift, name=name, label=label)
    return frame, perm


def read_map_header(path: str | os.PathLike) -> DensityMap:
    """The frame of a map file from its header alone, without reading (or decompressing) its data.

    Returns
    -------
    DensityMap
        Grid, cell, start and origin as :func:`read_map` gives them; ``data`` is a read-only
        zero-strided placeholder of the map's shape that takes no memory (``shape`` and
        ``grid_coordinates`` work; the values are not the map's).

    Raises
    ------
    InputError
        Missing file, unreadable or inconsistent header.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path.name}: map file not found")
    try:
        with mrcfile.open(str(path), mode="r", header_only=True, permissive=False) as mrc:
            h = mrc.header.copy()
    except (EOFError, OSError, zlib.error) as exc:
        raise InputError(f"{path.name}: corrupt or truncated file ({exc})") from None
    except Exception as exc:  # mrcfile raises ValueError on bad headers
        raise InputError(f"{path.name}: not a readable MRC/CCP4 map header ({exc})") from None
    return _frame(h, path.name)[0]


def read_map_box(path: str | os.PathLike, xyz: np.ndarray, padding: float = 5.0, *,
                 check_finite: bool = True) -> DensityMap:
    """The box of a map file around positions ``xyz`` (Å) plus ``padding`` Å, as :func:`cut_box`
    cuts it from :func:`read_map`'s result (the same voxels), reading only the box.

    An uncompressed file is memory-mapped (``mrcfile.mmap``); a gzip or bzip2 file is
    decompressed as a stream, section by section, keeping only the box's sections, and read to
    its end so that the format's checksum is checked. Either way the memory used follows the box,
    not the map. Non-finite values are looked for in the box only.

    Raises
    ------
    InputError
        As :func:`read_map`, and when no position lies over the map.
    """
    frame = read_map_header(path)
    lo, hi = box_bounds(frame, xyz, padding)
    return read_map_region(path, lo, hi, check_finite=check_finite)


def read_map_region(path: str | os.PathLike, lo, hi, *, check_finite: bool = True) -> DensityMap:
    """Voxels ``[lo, hi)`` (x, y, z indices into the file's grid, ``hi`` exclusive) of a map file,
    reading only those (memory-mapped, or streamed for a compressed file; see
    :func:`read_map_box`), as a map in the file's absolute frame.

    Raises
    ------
    InputError
        As :func:`read_map`, and for bounds outside the file's grid.
    """
    path = Path(path)
    frame = read_map_header(path)
    lo, hi = np.asarray(lo, int), np.asarray(hi, int)
    if np.any(lo < 0) or np.any(hi > np.array(frame.shape)) or np.any(hi <= lo):
        raise InputError(f"{path.name}: region {lo.tolist()}-{hi.tolist()} is not inside its {frame.shape} grid")
    if path.stat().st_size < 1024:
        raise InputError(f"{path.name}: file too short for an MRC header ({path.stat().st_size} bytes)")
    with open(path, "rb") as fh:
        magic = fh.read(3)
    if magic[:2] == b"\x1f\x8b" or magic == b"BZh":
        data = _stream_box(path, magic[:2] == b"\x1f\x8b", lo, hi)
    else:
        try:
            mrc = mrcfile.mmap(str(path), mode="r", permissive=False)
        except (EOFError, OSError, zlib.error) as exc:
            raise InputError(f"{path.name}: corrupt or truncated file ({exc})") from None
        except Exception as exc:
            raise InputError(f"{path.name}: not a readable MRC/CCP4 map ({exc})") from None
        try:
            if mrc.data is None or mrc.data.ndim != 3 or 0 in mrc.data.shape:
                raise InputError(f"{path.name}: map has no 3-D data block")
            _, perm = _frame(mrc.header, path.name)
            xyz_view = mrc.data.transpose(2, 1, 0).transpose(perm)  # a view: nothing read yet
            data = np.array(xyz_view[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], dtype=np.float32, order="C")
        finally:
            mrc.close()
    box = replace(frame, data=data, start=tuple(int(s + l) for s, l in zip(frame.start, lo)))
    return _checked(box, path, check_finite)


def _stream_box(path: Path, is_gzip: bool, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The ``[lo, hi)`` box (x, y, z voxels) of a compressed map file, decompressed section by
    section: only the box's sections are kept. Returns float32 ``[x, y, z]``."""
    import bz2

    try:
        with mrcfile.open(str(path), mode="r", header_only=True, permissive=False) as mrc:
            h = mrc.header.copy()
            dtype = mrcfile.utils.data_dtype_from_header(h)
    except (EOFError, OSError, zlib.error) as exc:
        raise InputError(f"{path.name}: corrupt or truncated file ({exc})") from None
    except Exception as exc:
        raise InputError(f"{path.name}: not a readable MRC/CCP4 map ({exc})") from None
    _, perm = _frame(h, path.name)
    nc, nr, ns = int(h.nx), int(h.ny), int(h.nz)
    # box bounds along the file's column, row and section axes (x, y, z is crs permuted by perm)
    b_lo, b_hi = [0, 0, 0], [0, 0, 0]
    for k, d in enumerate(perm):
        b_lo[d], b_hi[d] = int(lo[k]), int(hi[k])
    section = nc * nr * dtype.itemsize
    out = np.empty((b_hi[2] - b_lo[2], b_hi[1] - b_lo[1], b_hi[0] - b_lo[0]), np.float32)
    opener = gzip.open if is_gzip else bz2.open
    try:
        with opener(path, "rb") as fh:
            fh.seek(1024 + int(h.nsymbt) + b_lo[2] * section)
            for i in range(out.shape[0]):
                raw = fh.read(section)
                if len(raw) != section:
                    raise InputError(f"{path.name}: truncated data ({ns} sections stated, "
                                     f"{b_lo[2] + i} found)")
                sec = np.frombuffer(raw, dtype=dtype).reshape(nr, nc)
                out[i] = sec[b_lo[1]:b_hi[1], b_lo[0]:b_hi[0]]
            # read the rest to the end, keeping nothing: the compressed format's own check (gzip's
            # CRC-32 and length, bzip2's block CRCs) comes only at the end of the stream, and a
            # corrupt stream can decompress without error into wrong values before it
            rest, want = 0, (ns - b_hi[2]) * section
            while chunk := fh.read(STREAM_CHUNK):
                rest += len(chunk)
            if rest < want:
                raise InputError(f"{path.name}: truncated data ({ns} sections stated, "
                                 f"{b_hi[2] + rest // section} found)")
    except (EOFError, OSError, zlib.error) as exc:
        raise InputError(f"{path.name}: corrupt or truncated file ({exc})") from None
    return np.ascontiguousarray(out.transpose(2, 1, 0).transpose(perm))


def write_map(path: str | os.PathLike, dmap: DensityMap) -> Path:
    """Write ``dmap`` as an MRC2014 file, atomically (temporary file + rename).

    The absolute frame is kept: a whole-voxel offset goes into NSTART; any
    remainder, as Chimera does, into the ORIGIN words (Å). Gzip when the name ends in ``.gz``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    vox = dmap.voxel_size
    origin = dmap.origin
    if dmap.is_orthogonal:
        steps = origin / vox
        istart = np.round(steps).astype(int)
        rest = origin - istart * vox
        if np.all(np.abs(rest) < 1e-4 * vox):
            rest = np.zeros(3)
        else:
            istart = np.zeros(3, int)
            rest = origin
    else:
        istart = np.array(dmap.start)
        rest = np.asarray(dmap.origin_shift, float)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".mrc", dir=path.parent)
    os.close(fd)
    try:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(dmap.data.transpose(2, 1, 0), dtype=np.float32))
            h = mrc.header
            h.mx, h.my, h.mz = dmap.sampling
            h.cella = (dmap.cell.a, dmap.cell.b, dmap.cell.c)
            h.cellb = (dmap.cell.alpha, dmap.cell.beta, dmap.cell.gamma)
            h.nxstart, h.nystart, h.nzstart = (int(x) for x in istart)
            h.origin = tuple(float(x) for x in rest)
            mrc.update_header_stats()
        if path.suffix == ".gz":
            gz_tmp = tmp + ".gz"
            with open(tmp, "rb") as src, gzip.open(gz_tmp, "wb", compresslevel=6) as dst:
                while chunk := src.read(1 << 22):
                    dst.write(chunk)
            os.chmod(gz_tmp, 0o644)  # outputs are published (a web server reads them)
            os.replace(gz_tmp, path)
            os.unlink(tmp)
        else:
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are published
            os.replace(tmp, path)
    except BaseException:
        for t in (tmp, tmp + ".gz"):
            if os.path.exists(t):
                os.unlink(t)
        raise
    return path


def mean_sd(data: np.ndarray) -> tuple[float, float]:
    """Mean and (population) standard deviation of a map's values, summed in float64 slab by
    slab (no box-size float64 copy, as ``data.std(dtype=np.float64)`` would make)."""
    n = data.size
    if n == 0:
        return float("nan"), float("nan")
    s1 = sum(float(np.sum(slab, dtype=np.float64)) for slab in data)
    mean = s1 / n
    s2 = sum(float(np.sum(np.square(slab.astype(np.float64) - mean))) for slab in data)
    return mean, math.sqrt(s2 / n)


def fraction_inside(dmap: DensityMap, xyz: np.ndarray) -> float:
    """Fraction of positions ``xyz`` (Å, shape (N, 3)) that lie inside the map box."""
    xyz = np.asarray(xyz).reshape(-1, 3)
    if len(xyz) == 0:
        return 0.0
    g = dmap.grid_coordinates(xyz)
    hi = np.array(dmap.shape) - 1
    inside = np.all((g >= 0) & (g <= hi), axis=1)
    return float(inside.mean())


def box_bounds(dmap: DensityMap, xyz: np.ndarray, padding: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """Voxel index bounds ``(lo, hi)`` (``hi`` exclusive) of the box :func:`cut_box` cuts around
    ``xyz`` (Å) plus ``padding`` Å, clipped to the map. Needs only the map's frame (a header-only
    map from :func:`read_map_header` will do). Raises :class:`InputError` when no position lies
    over the map or the cell is not orthogonal."""
    if not dmap.is_orthogonal:
        raise InputError(f"{dmap.name}: boxing needs an orthogonal cell")
    xyz = np.asarray(xyz, float).reshape(-1, 3)
    g = dmap.grid_coordinates(xyz)
    pad = padding / dmap.voxel_size
    lo = np.floor(g.min(axis=0) - pad).astype(int)
    hi = np.ceil(g.max(axis=0) + pad).astype(int) + 1
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, np.array(dmap.shape))
    if np.any(hi - lo < 2):
        raise InputError(f"{dmap.name}: the model does not overlap the map")
    return lo, hi


def cut_box(dmap: DensityMap, xyz: np.ndarray, padding: float = 5.0) -> DensityMap:
    """Cut the part of an orthogonal map around ``xyz`` (Å) plus ``padding`` Å.

    The result keeps the absolute frame (its ``start`` moves); a box is never larger
    than the map. Raises :class:`InputError` when no position lies over the map.
    """
    lo, hi = box_bounds(dmap, xyz, padding)
    data = np.ascontiguousarray(dmap.data[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]])
    return replace(dmap, data=data, start=tuple(int(s + l) for s, l in zip(dmap.start, lo)))
