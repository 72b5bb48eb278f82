"""Run a label-free architecture search (one worker; or an array of them with ``-m``).

python launch/search.py                                   # embedded default, local CPU
python launch/search.py -m hydra/launcher=submitit_slurm 'worker=range(16)' study=postgres
"""

from __future__ import annotations

from cnas_hpc.cli.search import main

if __name__ == "__main__":
    main()
