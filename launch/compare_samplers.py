"""TPE vs random sampling (and the encodings) at equal budgets, over several seeds.

python launch/compare_samplers.py debug=tiny compare.n_trials=8
python launch/compare_samplers.py -m hydra/launcher=submitit_slurm study=postgres ...  # ONE array
"""

from __future__ import annotations

from cnas_hpc.cli.compare_samplers import main

if __name__ == "__main__":
    main()
