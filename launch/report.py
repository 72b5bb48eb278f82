"""Status and pictures of a search: who runs what, what a resume would do, the best cells so far.

python launch/report.py                                    # the default search's study
python launch/report.py study=postgres experiment=csnas_paper report.top_k=10

Give it the same overrides as the search: they address the same study. Read-only: a missing
study is an error (exit 2), never created.
"""

from __future__ import annotations

from cnas_hpc.cli.report import main

if __name__ == "__main__":
    main()
