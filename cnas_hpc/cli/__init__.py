"""The command line (top floor): Hydra glue, validation before anything is queued, composition.

``launch/*.py`` are thin ``@hydra.main`` wrappers around the task functions here.
"""
