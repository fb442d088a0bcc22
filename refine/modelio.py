"""Reading, validating and writing atomic models (mmCIF or PDB, gzip or not) with gemmi."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import gemmi
import numpy as np

from rerefine.common.errors import InputError

log = logging.getLogger(__name__)


def read_model(path: str | os.PathLike) -> gemmi.Structure:
    """Read the first model of a coordinate file into a :class:`gemmi.Structure`.

    Only the first MODEL is kept (EM entries have one). Entities are set up so that
    polymer/ligand/water classification works downstream.

    Raises
    ------
    InputError
        Missing or unparsable file, or a model with no atoms.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path.name}: model file not found")
    try:
        st = gemmi.read_structure(str(path), merge_chain_parts=True)
    except Exception as exc:  # gemmi raises RuntimeError/ValueError with a message
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path.name}: not a readable mmCIF/PDB model ({msg})") from None
    if len(st) == 0 or st[0].count_atom_sites() == 0:
        raise InputError(f"{path.name}: model has no atoms")
    while len(st) > 1:
        del st[len(st) - 1]
    st.setup_entities()
    st.remove_empty_chains()
    if not st.name:
        st.name = path.name.split(".")[0]
    return st


def model_resolution(st: gemmi.Structure) -> float | None:
    """Resolution stated in the model file (REMARK 2, ``_em_3d_reconstruction``, ``_refine``), Å, or None."""
    res = float(st.resolution or 0.0)
    return res if res > 0 else None


def atom_positions(st: gemmi.Structure, *, hydrogens: bool = True) -> np.ndarray:
    """Cartesian coordinates (Å) of the atoms of the first model, shape (N, 3)."""
    out = []
    for cra in st[0].all():
        if not hydrogens and cra.atom.is_hydrogen():
            continue
        p = cra.atom.pos
        out.append((p.x, p.y, p.z))
    return np.array(out, dtype=np.float64).reshape(-1, 3)


def summary(st: gemmi.Structure) -> dict:
    """Counts of atoms, residues and chains of the first model."""
    model = st[0]
    return {
        "n_atoms": int(model.count_atom_sites()),
        "n_hydrogens": int(sum(1 for cra in model.all() if cra.atom.is_hydrogen())),
        "n_residues": int(sum(len(ch) for ch in model)),
        "chains": [ch.name for ch in model],
    }


def write_model(path: str | os.PathLike, st: gemmi.Structure, *, program: str | None = None,
                version: str | None = None) -> Path:
    """Write ``st`` as mmCIF (or PDB when the name ends in ``.pdb``) atomically.

    ``program`` and ``version`` are recorded in ``_software`` so a refined model says
    what made it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        if path.suffix == ".pdb":
            st.write_pdb(tmp)
        else:
            st.setup_entities()
            doc = st.make_mmcif_document()
            if program:
                block = doc.sole_block()
                loop = block.init_loop("_software.", ["pdbx_ordinal", "name", "version", "classification"])
                loop.add_row(["1", gemmi.cif.quote(program), gemmi.cif.quote(version or "?"), "refinement"])
            doc.write_file(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are published (a web server reads them)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
