"""Identifier validation: every PDB id, EMDB id and file name is checked here before it
becomes part of a path or a URL.

Accepted PDB ids
----------------
* classic wwPDB ids: a digit and three letters/digits (``5me2``), returned lower case;
* extended wwPDB ids: ``pdb_`` and eight letters/digits (``pdb_00005me2``), lower case;
* local ids for models that are *not* wwPDB entries (e.g. a model fitted by a tutorial
  author): ``loc_`` and 1-24 of ``[a-z0-9_]`` (``loc_3ajo_fitted``). The prefix can never
  collide with an archive id, so a local model is never mistaken for a deposited one.

Accepted EMDB ids: ``EMD-`` and four or five digits (``emd_3488``, ``3488`` and
``EMD-3488`` all normalise to ``EMD-3488``).
"""

from __future__ import annotations

import re

from rerefine.common.errors import InputError

_CLASSIC = re.compile(r"^[0-9][a-z0-9]{3}$")
_EXTENDED = re.compile(r"^pdb_[a-z0-9]{8}$")
_LOCAL = re.compile(r"^loc_[a-z0-9_]{1,24}$")
_EMDB = re.compile(r"^(?:emd[-_]?)?(\d{4,5})$", re.IGNORECASE)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def pdb_id(value: object) -> str:
    """Validated, lower-case PDB id (classic, extended ``pdb_`` or local ``loc_``).

    Raises
    ------
    InputError
        Anything else (including path separators, blanks, ``..``).
    """
    s = str(value).strip().lower() if value is not None else ""
    if _CLASSIC.match(s) or _EXTENDED.match(s) or _LOCAL.match(s):
        return s
    raise InputError(f"bad PDB id {str(value)[:40]!r}: expected e.g. 5me2, pdb_00005me2 or loc_name")


def is_local(pid: str) -> bool:
    """True for ``loc_`` ids: models that are not wwPDB entries."""
    return pid.startswith("loc_")


def divided_key(pid: str) -> str:
    """Sub-directory of the archive's "divided" layout for a PDB id.

    Classic ids use their middle two characters (``5me2`` -> ``me``). Extended ids of the
    form ``pdb_0000XXXX`` map onto the classic id ``XXXX``; for any other long id we use the
    two characters before the last one, which is the same rule for classic ids
    (``pdb_00005me2`` -> ``me``, ``loc_3ajo_fitted`` -> ``te``). The rule for long ids is
    our convention (the wwPDB has not fixed one for ids beyond four characters).
    """
    pid = pdb_id(pid)
    if _CLASSIC.match(pid):
        return pid[1:3]
    return pid[-3:-1]


def classic_of(pid: str) -> str | None:
    """The four-character id of ``pid`` when it has one (``pdb_00005me2`` -> ``5me2``)."""
    pid = pdb_id(pid)
    if _CLASSIC.match(pid):
        return pid
    if _EXTENDED.match(pid) and pid[4:8] == "0000" and _CLASSIC.match(pid[8:]):
        return pid[8:]
    return None


def emdb_id(value: object) -> str:
    """Validated EMDB id in canonical form ``EMD-1234``.

    Raises
    ------
    InputError
        Not ``EMD-`` with four or five digits.
    """
    s = str(value).strip() if value is not None else ""
    m = _EMDB.match(s)
    if not m:
        raise InputError(f"bad EMDB id {s[:40]!r}: expected EMD- and 4 or 5 digits")
    return f"EMD-{m.group(1)}"


def emdb_number(value: object) -> str:
    """The digits of an EMDB id (``EMD-3488`` -> ``3488``), validated."""
    return emdb_id(value)[4:]


def safe_filename(name: object, *, what: str = "file name") -> str:
    """A file name that is safe to join to a directory or a URL.

    Only letters, digits, ``.``, ``_`` and ``-``; must start with a letter or digit; no
    ``..``; at most 200 characters. Names come from archive metadata (e.g. the EMDB
    ``map.file`` field), so they are untrusted.
    """
    s = str(name) if name is not None else ""
    if not _SAFE_NAME.match(s) or ".." in s:
        raise InputError(f"unsafe {what} {s[:60]!r}")
    return s
