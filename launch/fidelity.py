"""Does the label-free score rank cells the way accuracy does? Measure it on your data.

python launch/fidelity.py data=npz data.path=cifar_train.npz data.test_path=cifar_test.npz
python launch/fidelity.py -m hydra/launcher=submitit_slurm study=postgres ...   # ONE array
"""

from __future__ import annotations

from cnas_hpc.cli.fidelity import main

if __name__ == "__main__":
    main()
