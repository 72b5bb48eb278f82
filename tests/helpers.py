"""Shared helpers of the test suite (not fixtures: those live in conftest.py)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from sqlalchemy.engine import make_url

from cnas_hpc.config import Settings, settings_from_config
from cnas_hpc.space.genotype import Genotype
from hydra_plugins.cnas_hpc_launcher.cluster_launcher import HELD_STATES

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "cnas_hpc" / "configs"

#: Overrides that make a search run in seconds on a 2-core CPU. One objective (the score):
#: the study every mechanics test drives (claims, budget, faults, pruning, resume); the default
#: two-objective study (score and NASWOT, ranked by mean rank) has its own tests
#: (tests/test_search_default_objectives.py) and runs wherever a test composes without TINY.
TINY = (
    "debug=tiny",
    "search.poll_seconds=0.5",
    "search.objectives=[]",
)


#: A toy evaluation protocol on the embedded digits: seconds per cell on one CPU thread.
QUICK_EVAL = (
    "protocol=debug",
    "protocol.cells=3",
    "protocol.channels=6",
    "protocol.epochs=2",
    "protocol.max_steps_per_epoch=4",
    "protocol.amp=none",
    "protocol.memory_format=contiguous",
    "data=digits",
)


def two_node_genotype() -> Genotype:
    """A small valid genotype: two nodes per cell, every input and op kind used once or more
    (a fresh one each call: tests mutate it to break one rule at a time)."""
    return Genotype(
        normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("skip_connect", 0), ("avg_pool_3x3", 2)],
        normal_concat=[2, 3],
        reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1)],
        reduce_concat=[2, 3],
    )


def compose_config(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Compose the real search config with ``overrides`` and return it resolved (no hydra node)."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="search", overrides=list(overrides))
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    container.pop("hydra", None)
    return container  # type: ignore[return-value]


def tiny_settings(tmp_path: Path, *overrides: str) -> Settings:
    """Validated settings of a tiny search whose SQLite study lives under ``tmp_path``."""
    return settings_from_config(compose_config([*TINY, f"output_dir={tmp_path}", *overrides]))


def run_launch(
    script: str,
    args: Sequence[str],
    *,
    home: Path,
    cwd: Path = ROOT,
    timeout: float = 600,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``launch/<script>`` as a user would, in a subprocess (stdout/stderr captured)."""
    full_env = {**os.environ, "CNAS_HOME": str(home), "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "launch" / script), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_here(
    script: str,
    main: Callable[[], object],
    args: Sequence[str],
    *,
    home: Path,
    cwd: Path = ROOT,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command's entry point ``main`` (what ``launch/<script>`` calls) in THIS process, as
    ``python launch/<script> *args`` would: ``sys.argv``, ``CNAS_HOME`` (and ``env``) and the
    working directory set, stdout and stderr captured, the exit status taken from
    ``SystemExit`` (0 when ``main`` returns).

    For checks that need no fresh process: a refusal of bad input (it ends before any work), a
    rerun that finds its work done, a read-only report, a further run of a command whose first
    run in the same test went through a real process. A process start costs ~3.5 CPU-s (torch,
    Hydra) and proves nothing the real processes of the end-to-end tests do not. What the command
    changes in this process is undone: ``sys.argv``, the environment, the logging setup (Hydra
    configures the root logger; the handlers it added are closed), torch's threads.
    """
    manager = logging.Logger.manager
    loggers = [logging.root, *manager.loggerDict.values()]
    kept = [
        (x, x.level, list(x.handlers), x.propagate, x.disabled)
        for x in loggers
        if isinstance(x, logging.Logger)
    ]
    threads = torch.get_num_threads()
    out, err = io.StringIO(), io.StringIO()
    code: int | str | None = 0
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", [str(ROOT / "launch" / script), *args])
        for key, value in {"CNAS_HOME": str(home), **(env or {})}.items():
            patch.setenv(key, value)
        patch.chdir(cwd)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                main()
        except SystemExit as exc:
            code = exc.code
        finally:
            before = {id(h) for _, _, handlers, _, _ in kept for h in handlers}
            for logger in [logging.root, *manager.loggerDict.values()]:
                if isinstance(logger, logging.Logger):
                    for handler in logger.handlers:
                        if id(handler) not in before:  # Hydra's (a job's log file among them)
                            handler.close()
                    logger.handlers[:] = [h for h in logger.handlers if id(h) in before]
            for logger, level, handlers, propagate, disabled in kept:
                logger.setLevel(level)
                logger.handlers[:] = handlers
                logger.propagate, logger.disabled = propagate, disabled
            torch.set_num_threads(threads)
    returncode = code if isinstance(code, int) else (0 if code is None else 1)
    return subprocess.CompletedProcess([script, *args], returncode, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def thread_counts_set(node_cores: int) -> Iterator[list[int]]:
    """Every intra-op thread count set in the body (``torch.set_num_threads``), on a node that
    seems to have ``node_cores`` cores (what a step plan's thread measurement may try without a
    cap). The test process runs one thread meanwhile, so that :func:`run_here`'s restore adds no
    count of its own; its threads are given back after."""
    before = torch.get_num_threads()
    real = torch.set_num_threads
    real(1)
    seen: list[int] = []

    def record(threads: int) -> None:
        seen.append(threads)
        real(threads)

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("cnas_hpc.train.plan.available_cores", lambda: node_cores)
            patch.setattr(torch, "set_num_threads", record)
            yield seen
    finally:
        real(before)


def run_search(
    args: Sequence[str], *, home: Path, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``launch/search.py`` as a user would (see :func:`run_launch`)."""
    return run_launch("search.py", args, home=home, timeout=timeout, env=env)


def sacct_array_tasks(array_job_id: str, timeout: float = 120.0) -> list[str]:
    """``JobID|State`` per array task once no task is still settling.

    submitit reads a task as done as soon as its result file exists; the task's process and
    slurmctld's report to slurmdbd can lag that by seconds on a loaded node, so this polls for the
    final accounting states instead of reading them once.
    """
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-j", array_job_id, "-o", "JobID,State"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        tasks = [line for line in out.splitlines() if line.strip()]
        settling = [t for t in tasks if t.rpartition("|")[2].strip().split(" ")[0] in HELD_STATES]
        if not settling or time.monotonic() > deadline:
            return tasks
        time.sleep(1.0)


def query_rows(url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """All rows of ``sql`` (with bound ``params``) on the database at ``url``; the engine is
    disposed before returning, so no test leaves a connection open."""
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(sqlalchemy.text(sql), params)]
    finally:
        engine.dispose()


def completed_array(stdout: str, n_tasks: int) -> str:
    """The id of the one SLURM array a multirun's ``stdout`` says it submitted, asserting that
    it ran ``n_tasks`` tasks and that every one COMPLETED (:func:`sacct_array_tasks`)."""
    (array_id,) = {line.split()[-4] for line in stdout.splitlines() if "submitted array" in line}
    tasks = sacct_array_tasks(array_id)
    assert len(tasks) == n_tasks and all(t.endswith("|COMPLETED") for t in tasks), tasks
    return array_id


T = TypeVar("T")


def wait_for(condition: Callable[[], T], what: str, timeout: float = 300, poll_s: float = 0.5) -> T:
    """Poll ``condition`` every ``poll_s`` s and return its first truthy value; fail the test
    with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    pytest.fail(f"timed out waiting for {what}")


#: The real CIFAR-10 arrays shared with the project (``../shared/data/cifar10``).
CIFAR10_DIR = ROOT.parent / "shared" / "data" / "cifar10"


def cifar10_npz() -> tuple[Path, Path]:
    """``(train_10k, test)`` npz paths; skip when absent (a user's machine), FAIL in CI."""
    train, test = CIFAR10_DIR / "cifar10_train_10k.npz", CIFAR10_DIR / "cifar10_test.npz"
    if not (train.is_file() and test.is_file()):
        reason = f"the CIFAR-10 arrays are not in {CIFAR10_DIR}"
        if os.environ.get("CI", "").strip().lower() in {"true", "1"}:
            pytest.fail(f"{reason} (CI=true: they must be there)", pytrace=False)
        pytest.skip(reason)
    return train, test


def run_evaluate(
    args: Sequence[str], *, home: Path, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``launch/evaluate.py`` as a user would (see :func:`run_launch`)."""
    return run_launch("evaluate.py", args, home=home, timeout=timeout, env=env)


def worker_address(base: int = 2) -> str:
    """A loopback address of this xdist worker's own (``127.0.0.<base + worker index>``).

    For a test that must listen on a fixed port (the database proxy listens on PostgreSQL's
    port, so that ``~/.pgpass`` matches): two workers never bind the same address.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return f"127.0.0.{base + int(worker.removeprefix('gw') or 0)}"


class DatabaseProxy:
    """A TCP forwarder in front of the real PostgreSQL server: an outage of OUR workers only.

    The PostgreSQL server is shared by every engineer's tests; stopping it would break theirs.
    Workers of a fault test reach the server through this proxy instead (a URL with
    ``host=localhost`` for ``~/.pgpass`` and ``hostaddr=127.0.0.<2+worker>`` for the proxy, see
    :meth:`url`): :meth:`down` refuses new connections and resets the open ones, exactly what a
    crashed or restarting server does to its clients; :meth:`up` serves again.
    """

    def __init__(self, listen: str | None = None, target: tuple[str, int] = ("127.0.0.1", 5432)):
        # Each xdist worker its own address: two fault tests may cut their roads at once.
        self.listen = (listen or worker_address(), target[1])
        self.target = target
        self._server: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def url(self, base_url: str) -> str:
        """``base_url`` (a password-free PostgreSQL URL) routed through the proxy."""
        parsed = make_url(base_url)
        routed = parsed.set(host="localhost", port=self.target[1]).update_query_dict(
            {"hostaddr": self.listen[0]}
        )
        return routed.render_as_string(hide_password=False)

    def up(self) -> None:
        """Accept connections (and forward them to the server)."""
        if self._server is not None:
            return
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(self.listen)
        server.listen(128)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def down(self) -> None:
        """Refuse new connections and reset every open one (the server "crashed")."""
        server, self._server = self._server, None
        if server is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would not, and the
            # kernel would go on accepting connections for it.
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_RDWR)
            server.close()
        with self._lock:
            for conn in self._open:
                # shutdown() first: close() alone neither wakes the pump blocked in recv() nor
                # tells the server, whose session (and any lock it holds) would live on.
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    conn.close()
            self._open.clear()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:  # closed by down()
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
            with self._lock:
                self._open.discard(source)
