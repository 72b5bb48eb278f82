"""Run the unit tests against the declared minimum version of every direct dependency.

A floor in ``pyproject.toml`` (``optuna>=4.9``) is a promise: the code works with that release.
Nothing else in CI checks it (``make install`` resolves the newest releases), so this script:

1. reads ``[project] dependencies`` and writes ``name==floor`` for each (every direct dependency
   must declare a ``>=`` floor: a dependency without one fails here);
2. installs exactly those releases into ``FLOORS_DIR`` (``pip install --target``), with the
   dependencies pip resolves for them (a floor's own needs, e.g. wandb 0.19's protobuf < 6, are
   met as a user's install would meet them); torch and torchvision are left out: the wheels on
   this machine's disk are the only ones CI may use (pip is capped by ``/etc/xdg/pip``), their
   floors are documented, not tested;
3. runs the unit tests (``-m "not slurm and not postgres and not slow"`` on the files of
   :data:`UNIT_TESTS`) with ``FLOORS_DIR`` first on ``PYTHONPATH``, so the floor releases shadow
   the newer ones of the project's virtual environment; everything else (torch, pytest) comes
   from that environment.

Usage (``make floors``, also part of ``make test``)::

    .venv/bin/python .ci/floors.py [--dir .venv-floors] [test files...] [pytest options...]

The install is skipped when ``FLOORS_DIR`` already holds the same pins (a stamp file).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
#: Dependencies whose floors are not installed: only the wheels on disk may be used.
ON_DISK = frozenset({"torch", "torchvision"})
#: The unit tests run at the floors: every direct dependency is exercised by at least one
#: (optuna + sqlalchemy + psycopg2: study/* on SQLite and PostgreSQL, hydra + pydantic: config,
#: hydra-submitit-launcher: the launcher's schema, submitit: the job environment, wandb:
#: tracking, scikit-learn: probe, matplotlib + tabulate: analysis, tenacity: retry, tqdm:
#: progress, numpy: everywhere), chosen to stay within a few minutes of the CI budget.
UNIT_TESTS = (
    "tests/test_study_lifecycle.py",
    "tests/test_study_retry.py",
    "tests/test_study_stale.py",
    "tests/test_study_budget.py",
    "tests/test_study_optuna_internals.py",
    "tests/test_study_pruner.py",
    "tests/test_config.py",
    "tests/test_tracking_wandb.py",
    "tests/test_tracking_progress.py",
    "tests/test_train_probe.py",
    "tests/test_analysis_report.py",
    "tests/test_analysis_samplers.py",
    "tests/test_distributed_env.py",
    "tests/test_validation.py::test_the_job_name_reaches_the_slurm_launcher",
)


def floors(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, str]:
    """``{name: floor}`` of every direct dependency declared in ``pyproject``.

    Raises:
        SystemExit: a dependency without a ``>=`` floor (exit 2, one ``error:`` line).
    """
    declared = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    out: dict[str, str] = {}
    for text in declared:
        req = Requirement(text)
        lower = [spec.version for spec in req.specifier if spec.operator == ">="]
        if len(lower) != 1:
            sys.exit(f"error: dependency {text!r} needs exactly one '>=' floor in pyproject.toml")
        out[req.name] = lower[0]
    return out


def install(pins: dict[str, str], target: Path) -> None:
    """Install exactly ``pins`` (and what they need) into ``target``, unless it holds them."""
    wanted = "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))
    stamp = target / ".cnas-floors"
    if stamp.is_file() and stamp.read_text() == wanted:
        return
    # From scratch: `pip install --target --upgrade` replaces a package's folder but keeps the
    # old release's .dist-info beside the new one, and importlib.metadata may read the old one.
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    requirements = target.parent / f"{target.name}.txt"
    requirements.write_text(wanted)
    print(f"installing the floors into {target}:\n{wanted}", flush=True)
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--upgrade", "--no-compile"]
    subprocess.run([*pip, "--target", str(target), "-r", str(requirements)], check=True)
    # The bytecode on every core (pip compiles on one); a file that does not compile for this
    # Python is left to import time, as pip leaves it.
    compileall = [sys.executable, "-m", "compileall", "-q", "-j0", str(target)]
    subprocess.run(compileall, stdout=subprocess.DEVNULL, check=False)
    stamp.write_text(wanted)


def main(argv: list[str] | None = None) -> int:
    """Install the floors and run the unit tests on them; the exit status is pytest's."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=ROOT / ".venv-floors", help="install target")
    parser.add_argument("tests", nargs="*", default=list(UNIT_TESTS), help="test files to run")
    args, pytest_args = parser.parse_known_args(argv)
    pins = {name: v for name, v in floors().items() if name not in ON_DISK}
    target = args.dir.resolve()
    install(pins, target)
    # The floors first: they shadow the project environment's newer releases of the same names.
    path = [str(target), str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    env["CNAS_FLOORS_DIR"] = str(target)  # tests/wandb_offline.py reads runs without the floors
    # Print what the tests will really import: a shadowing that failed would show here.
    check = (
        "import importlib.metadata as m, sys; "
        "print('floors in use:', *(f'{n}=={m.version(n)}' for n in sys.argv[1:]))"
    )
    subprocess.run([sys.executable, "-c", check, *sorted(pins)], env=env, check=True)
    # Its own base temporary folder: another pytest session of the same user (the main suite,
    # run by hand meanwhile) numbers folders in the same /tmp/pytest-of-<user>/ and may clean
    # up this one's.
    with tempfile.TemporaryDirectory(prefix="cnas-floors-") as basetemp:
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"]
        command += ["--basetemp", basetemp]
        command += ["-m", "not slurm and not postgres and not slow", *args.tests, *pytest_args]
        return subprocess.run(command, cwd=ROOT, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
