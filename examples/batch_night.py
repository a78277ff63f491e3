"""Calibrate a night of exposures on a dask cluster and look at the summary.

Run: ``python examples/batch_night.py [OUTPUT_DIR]``.  With ``client=None`` a
LocalCluster sized to the machine is started; pass ``client="tcp://host:8786"``
(or a ``distributed.Client``, e.g. of a dask-jobqueue SLURMCluster) to use a
running cluster.

The work is in ``main()`` behind ``if __name__ == "__main__"``: the
LocalCluster's worker processes are spawned, and each imports this script
again; without the guard every worker would start a batch of its own.
"""

import sys
from pathlib import Path

import pandas as pd

import kspec_xr as kx
from kspec_xr.testing import make_exposure


def main(folder: Path) -> pd.DataFrame:
    sims = [
        make_exposure(
            seed,
            n_fiber=60,
            n_standard=6,
            n_pixel=2048,
            directory=folder / "raw",
            name=f"run{seed:04d}",
        )
        for seed in range(1, 5)
    ]
    catalog = folder / "night_standards.csv"
    pd.concat([s.catalog for s in sims]).to_csv(catalog, index=False)

    summary = kx.calibrate_many([s.red_path for s in sims], folder / "calibrated", catalog=catalog)
    print(summary[["input", "status", "n_used", "rms", "seconds"]].to_string(index=False))
    return summary


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "night_output"))
