"""Study analysis (floor 5): status report, plots, cell drawings, summary tables, W&B study view.

It reads studies; it sits above the apps and is never imported by a worker.
"""
