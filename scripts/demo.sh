#!/usr/bin/env bash
# The README's main job: run rerefine on its embedded defaults against the sample
# archive made from ../shared/data (or RR_TEST_DATA) when it is there.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
DATA="${RR_TEST_DATA:-../shared/data}"
if [ ! -d "$DATA/maps_models" ]; then
    echo "No sample data at $DATA; set RR_TEST_DATA or run against the public archive." >&2
    exit 1
fi
M="$DATA/maps_models"
mkdir -p rerefine-data/demo
$BIN/rerefine info "$M/emd_3488_5me2/5me2.pdb" "$M/emd_3488_5me2/emd_3488.mrc" --json rerefine-data/demo/info_5me2.json
$BIN/rerefine info "$M/emd_30342_zone_7cec_chainA/390_7cec_A.cif" "$M/emd_30342_zone_7cec_chainA/390_emd_30342_A_z4.mrc" --json rerefine-data/demo/info_7cec.json
$BIN/rerefine info "$M/emd_20026_box_3ajo_refined/3ajo_fitted_refined.pdb" "$M/emd_20026_box_3ajo_refined/emd20026_prot.mrc" --json rerefine-data/demo/info_3ajo.json
echo "Demo results are in rerefine-data/demo/"
