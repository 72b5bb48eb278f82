"""The Hydra configs of every command (YAML only): ``pkg://cnas_hpc.configs``.

Groups are folders (``model/``, ``data/``, ``protocol/``, ``hydra/launcher/``, ...); each group's
schema is ``cnas_hpc/config/<group>.py``. Shipped inside the package so that an installed
``cnas-hpc`` runs from any directory; ``local/`` is the git-ignored site group of a clone.
"""
