"""Helper of ``bench_validation.py``: times cctbx's ramalyze/rotalyze/cbetadev/omegalyze in process.

Runs under the *cctbx* interpreter (a separate virtual environment, never the project's):
``python cctbx_validation_times.py MODEL RUNS`` prints one JSON line with the median seconds
of each analysis (model read once; the first run of each, which loads its tables, is not
counted), the import time, and the per-residue scores (percent) and classes of ramalyze and
rotalyze (``rama``/``rota``: ``CHAIN:SEQ:RESNAME -> [score, class]``) for the agreement check.
"""

import json
import statistics
import sys
import time

t0 = time.perf_counter()
import iotbx.pdb  # noqa: E402
from mmtbx.validation import cbetadev, omegalyze, ramalyze, rotalyze  # noqa: E402

t_import = time.perf_counter() - t0
path, runs = sys.argv[1], int(sys.argv[2])
hier = iotbx.pdb.input(file_name=path).construct_hierarchy()
jobs = {
    "ramalyze": lambda: ramalyze.ramalyze(pdb_hierarchy=hier, outliers_only=False),
    "rotalyze": lambda: rotalyze.rotalyze(pdb_hierarchy=hier, outliers_only=False),
    "cbetadev": lambda: cbetadev.cbetadev(pdb_hierarchy=hier, outliers_only=False),
    "omegalyze": lambda: omegalyze.omegalyze(pdb_hierarchy=hier, nontrans_only=False),
}
out = {"import_seconds": t_import}
for name, fn in jobs.items():
    res = fn()
    if name in ("ramalyze", "rotalyze"):
        out[name[:4]] = {f"{x.chain_id.strip()}:{x.resseq.strip()}{x.icode.strip()}:{x.resname.strip()}":
                         [x.score, (x.ramalyze_type() if name == "ramalyze" else x.evaluation).lower()]
                         for x in res.results}
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    out[name] = statistics.median(times)
print(json.dumps(out))
