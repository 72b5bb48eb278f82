"""``pip install .`` gives working commands: configs inside the package, console scripts,
``python -m cnas_hpc``, ``--help`` per command, and a default search from an empty directory.

The wheel is installed with ``--no-deps --target`` (the heavy dependencies come from the test's
own environment, as they would from a site's module system) and run with only that target on
``PYTHONPATH``, from a directory that holds nothing of the clone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT

#: What the wheel is built from (a copy, so the build leaves nothing in the clone).
SOURCES = ("pyproject.toml", "README.md", "cnas_hpc", "hydra_plugins")
COMMANDS = ("search", "evaluate", "fidelity", "report", "compare-samplers")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package installed from a built wheel into a target folder; returns the folder."""
    base = tmp_path_factory.mktemp("installed")
    source = base / "src"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "local")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, source / name)
    target = base / "site"
    done = subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
            "--no-build-isolation", "--target", str(target), str(source),
        ],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return target


def _run(
    args: list[str], target: Path, cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CNAS_HOME")}
    env.update(PYTHONPATH=str(target), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_the_wheel_ships_the_configs_and_the_commands(installed: Path) -> None:
    assert (installed / "cnas_hpc" / "configs" / "search.yaml").is_file()
    assert (installed / "cnas_hpc" / "configs" / "hydra" / "launcher" / "slurm_cpu.yaml").is_file()
    for command in COMMANDS:
        assert (installed / "bin" / f"cnas-{command}").is_file(), command


#: ``python -m cnas_hpc <args>`` for each ``args`` of ``sys.argv[1]`` (a JSON list), in ONE
#: process: the package's ``__main__`` run as ``-m`` runs it (:func:`runpy.run_module`), each in a
#: fresh empty folder; prints, as JSON, each one's exit status, stdout, stderr and what it left in
#: its folder. A process per command imported torch and the package again (~4 CPU-s each).
COMMANDS_IN_ONE_PROCESS = """
import contextlib, io, json, os, runpy, sys
runs = []
for n, args in enumerate(json.loads(sys.argv[1])):
    folder = os.path.abspath(str(n))
    os.mkdir(folder)
    os.chdir(folder)
    sys.argv = ["cnas_hpc", *args]
    out, err, code = io.StringIO(), io.StringIO(), 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_module("cnas_hpc", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    os.chdir("..")
    runs.append({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue(),
                 "wrote": os.listdir(folder)})
print(json.dumps(runs))
"""


@pytest.fixture(scope="module")
def helps(installed: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """``python -m cnas_hpc <command> --help`` of every command, from an empty directory."""
    where = tmp_path_factory.mktemp("helps")
    argvs = [[command, "--help"] for command in COMMANDS]
    result = _run(
        [sys.executable, "-c", COMMANDS_IN_ONE_PROCESS, json.dumps(argvs)], installed, where
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(zip(COMMANDS, json.loads(result.stdout.splitlines()[-1]), strict=True))


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_s_help_lists_its_config_groups(
    helps: dict[str, dict[str, Any]], command: str
) -> None:
    result = helps[command]
    assert result["code"] == 0, result["stderr"][-2000:]
    assert "== Configuration groups ==" in result["stdout"]
    assert "model: proxy_csnas, proxy_small" in result["stdout"]  # every command composes it
    if command == "evaluate":
        assert "protocol: darts_cifar, debug, imagenet_mobile" in result["stdout"]
    assert result["wrote"] == []  # --help writes nothing


def test_a_default_search_runs_from_an_empty_directory(installed: Path, tmp_path: Path) -> None:
    where = _run(
        [sys.executable, "-c", "import cnas_hpc; print(cnas_hpc.__file__)"], installed, tmp_path
    )
    assert where.stdout.strip().startswith(str(installed)), where.stdout  # not the clone's
    script = installed / "bin" / "cnas-search"
    result = _run(
        # One trial: the search runs, records and reports from here as it would with more.
        [sys.executable, str(script), "debug=tiny", "search.n_trials=1", "search.poll_seconds=0.5"],
        installed,
        tmp_path,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Best genotype" in result.stdout
    assert (tmp_path / "runs" / "cnas.db").is_file()


def test_an_unknown_command_gets_one_line(installed: Path, tmp_path: Path) -> None:
    result = _run([sys.executable, "-m", "cnas_hpc", "serach"], installed, tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: unknown command 'serach'; one of: search, evaluate, fidelity, report, "
        "compare-samplers"
    ]
