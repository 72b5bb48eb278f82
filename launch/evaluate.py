"""Train found cells from scratch and compare them with published cells (the evaluation phase).

python launch/evaluate.py eval.from_study=cnas-digits-compact eval.top_k=2 eval.presets=[DARTS_V2]
python launch/evaluate.py -m hydra/launcher=submitit_slurm study=postgres eval.from_study=nas \\
    eval.top_k=4 eval.presets=[DARTS_V2] data.root=/data        # ONE array, one cell per task
"""

from __future__ import annotations

from cnas_hpc.cli.evaluate import main

if __name__ == "__main__":
    main()
