"""MolProbity-class validation of atomic models (science core).

:func:`validate` gives, per residue and per model: Ramachandran class (Top8000 contours),
rotamer class (Top8000 grids; ARG/LYS not scored), C-beta deviation, cis/twisted peptides,
chirality inversions, the all-atom clashscore (hydrogens from the monomer library) and
bond/angle RMSDs with and without hydrogens. Each check's module states its definition
and reference. Top8000 reference data, Williams et al. (2018) Protein Sci. 27:293-315,
CC-BY 4.0.
"""

from .report import SUMMARY_KEYS, ValidationReport, validate, validate_pair
from .tables import CREDIT, default_top8000_dir

__all__ = ["validate", "validate_pair", "ValidationReport", "SUMMARY_KEYS", "CREDIT", "default_top8000_dir"]
