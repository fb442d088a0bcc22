#!/usr/bin/env bash
# The README's main job on the embedded defaults: SQLite under rerefine-data/, Prefect without a
# server, local files. Runs against the sample archive made from ../shared/data (or RR_TEST_DATA)
# when it is there, and against the public archive otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
DATA="${RR_TEST_DATA:-../shared/data}"
export RR_DATA_DIR="${RR_DATA_DIR:-rerefine-data}"
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$PWD/.numba-cache}"
if [ -d "$DATA/maps_models" ]; then
    # the sample entries need only the test data's subset of the monomer library
    export RR_MONOMER_LIB="${RR_MONOMER_LIB:-$DATA/monomers}"
    $BIN/rerefine sample-archive --data "$DATA" --out "$RR_DATA_DIR/sample-archive"
    $BIN/rerefine nightly --mirror "$RR_DATA_DIR/sample-archive" --json "$RR_DATA_DIR/nightly-summary.json"
else
    echo "No sample data at $DATA: running against the public archive." >&2
    $BIN/rerefine nightly --json "$RR_DATA_DIR/nightly-summary.json"
fi
echo "Open $RR_DATA_DIR/site/index.html in a browser (summary: $RR_DATA_DIR/nightly-summary.json)."
