"""Where the real test data live and which map/model pairs they hold (for tests and benchmarks).

The folder is ``RR_TEST_DATA`` (default ``../shared/data`` beside the repository); it is read in
place, never copied into the project.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("RR_TEST_DATA", REPO.parent / "shared" / "data")).resolve()
MONLIB = DATA / "monomers"

# name -> (model, map, resolution in Å) under DATA / "maps_models".
PAIRS = {
    "emd_3488_5me2": ("emd_3488_5me2/5me2.pdb", "emd_3488_5me2/emd_3488.mrc", 3.2),
    "emd_30342_zone_7cec_chainA": (
        "emd_30342_zone_7cec_chainA/390_7cec_A.cif",
        "emd_30342_zone_7cec_chainA/390_emd_30342_A_z4.mrc",
        3.9,
    ),
    "emd_20026_box_3ajo_refined": (
        "emd_20026_box_3ajo_refined/3ajo_fitted_refined.pdb",
        "emd_20026_box_3ajo_refined/emd20026_prot.mrc",
        1.75,
    ),
}
