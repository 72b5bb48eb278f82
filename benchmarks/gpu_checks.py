"""The GPU measurements and CUDA-path checks of ``benchmarks/gpu.sh``, as one markdown table.

On a one-GPU node (see ``benchmarks/gpu.sh`` and ../shared/GPU.md) this measures, side by side
in one run, for the ``csnas_paper`` proxy (8 cells x 32 channels, batch 256, memory-bank NCE,
DARTS_V2 cells, CIFAR-10 from ``--data``):

* candidate images/s: today's eager step (NCHW fp32, with the per-step ``loss.item()`` the loop
  used to make), the same without host syncs, the plan the autotuner chooses on this GPU, and
  the reference code's pipeline (per-sample torchvision transforms in a DataLoader);
* step times of the DARTS evaluation network (20 x 36, batch 96) for every layout x precision;

and runs the CUDA paths no CPU test reaches: a worker's process group through NCCL (world size
1), AMP with the grad scaler, the memory bank on the device, a training step under CUDA's sync
debug mode (no host sync), a real CUDA out-of-memory error recorded PRUNED with its memory
released, an end-to-end search through the CLI, and the two tests that skip without CUDA.

Every check is independent: a failure is reported in its row and the others still run.
``--dry-run`` runs the same code on the CPU at tiny sizes (CUDA-only rows say so): the test
suite uses it to keep this script working where no GPU is lent.

    python3 benchmarks/gpu_checks.py --data .gpu-data/cifar10_train_10k.npz [--out DIR]
    .venv/bin/python benchmarks/gpu_checks.py --dry-run
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import optuna
import torch
import torch.nn.functional as F
from search_settings import compose_search_settings
from torch.utils.data import DataLoader, Dataset

from cnas_hpc.common import attrs
from cnas_hpc.config import Settings
from cnas_hpc.config.train import LAYOUTS
from cnas_hpc.data.datasets import load_images
from cnas_hpc.data.splits import epoch_batches, make_search_data
from cnas_hpc.distributed.collectives import agree_across_ranks, flags_backend
from cnas_hpc.distributed.env import DistEnv, destroy_distributed, join_process_group
from cnas_hpc.models.networks import NetworkCIFAR
from cnas_hpc.search.trial import proxy_task
from cnas_hpc.search.worker import WorkerError, run_worker
from cnas_hpc.space.genotype import DARTS_V2
from cnas_hpc.ssl.losses import MemoryBankNCE
from cnas_hpc.ssl.registry import MemoryBank
from cnas_hpc.study.lifecycle import bootstrap_study, load_study
from cnas_hpc.train.autotune import device_name, measure_in_turns, synchronize
from cnas_hpc.train.loop import build_candidate, train_candidate
from cnas_hpc.train.plan import StepPlan
from cnas_hpc.train.plan_tuning import choose_plan
from cnas_hpc.train.step import ContrastiveStep

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_augment import per_sample_pipeline  # a sibling script

ROOT = Path(__file__).resolve().parents[1]
CUDA_TESTS = (
    "tests/test_models_networks.py::test_networks_run_where_they_are_moved",
    "tests/test_ssl_augment.py::test_cuda_generator_on_device_and_mismatch_rejected",
)


@dataclass
class Report:
    """Rows of the result table, printed as they come and written at the end."""

    rows: list[tuple[str, str, str]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def add(self, what: str, value: str, note: str = "") -> None:
        self.rows.append((what, value, note))
        print(f"| {what} | {value} | {note} |", flush=True)

    def markdown(self) -> str:
        lines = ["| check / measurement | result | note |", "|---|---|---|"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in self.rows]
        return "\n".join(lines)


@dataclass(frozen=True)
class Setup:
    """What every check shares."""

    device: torch.device
    dry_run: bool
    out: Path
    data_path: Path | None
    steps: int
    workers: tuple[int, ...]

    def settings(self, *overrides: str, tiny: bool = False, home: Path | None = None) -> Settings:
        """The real configs: ``experiment=csnas_paper`` on the CIFAR npz; ``tiny`` (and a dry
        run) use ``debug=tiny`` sizes; a dry run uses the embedded digits."""
        home = home or self.out / "home"
        base = ["experiment=csnas_paper", "wandb=disabled", f"output_dir={home}"]
        if self.dry_run or self.data_path is None:
            base += ["data=digits"]  # scikit-learn's embedded images: no file needed
        else:
            base += ["data=npz", f"data.path={self.data_path}"]
        if tiny or self.dry_run:
            base += ["debug=tiny"]
        base.append(f"device={self.device.type}")
        return compose_search_settings([*base, *overrides])


def check(report: Report, what: str, run: Callable[[], tuple[str, str]]) -> None:
    """Run one check; its (result, note) becomes a row, an exception a FAILED row."""
    started = time.perf_counter()
    try:
        value, note = run()
    except Exception as exc:  # a broken check must not stop the others
        traceback.print_exc()
        value, note = "FAILED", f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    seconds = time.perf_counter() - started
    report.add(what, value, f"{note} ({seconds:.0f} s)".strip())


# -- candidate images/s --------------------------------------------------------------------------


def _stepper(setup: Setup, settings: Settings, plan: StepPlan, images: torch.Tensor) -> Any:
    model = build_candidate(DARTS_V2, settings.model, settings.seed, setup.device)
    plan.prepare(model)
    n, batch = len(images), settings.train.batch_size
    per_epoch = n // batch
    stepper = ContrastiveStep(
        model, proxy_task(settings), setup.device, n_train=n,
        total_steps=settings.train.epochs * per_epoch, warmup_steps=0, plan=plan,
    )  # fmt: skip
    grid = torch.stack(epoch_batches(n, batch, epoch=0, seed=settings.seed)).to(setup.device)
    return stepper, grid


def candidate_rate(setup: Setup, settings: Settings, plan: StepPlan, images: torch.Tensor,
                   *, read_loss_each_step: bool = False) -> float:  # fmt: skip
    """Training images/s of the DARTS_V2 candidate under ``plan`` (views, 2 forwards, loss,
    backward, update), after 3 warm-up steps."""
    stepper, grid = _stepper(setup, settings, plan, images)
    with plan.threads_applied():
        for i in range(3):
            stepper(images, grid[i % len(grid)], i)
        synchronize(setup.device)
        started = time.perf_counter()
        for i in range(setup.steps):
            loss = stepper(images, grid[i % len(grid)], 3 + i)
            if read_loss_each_step:  # what the loop did before issue 12
                float(loss.item())
        synchronize(setup.device)
    return setup.steps * settings.train.batch_size / (time.perf_counter() - started)


class _TwoViews(Dataset[tuple[torch.Tensor, torch.Tensor, int]]):
    """The reference code's feeding: per-sample transforms of uint8 CHW images, two views."""

    def __init__(self, images: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor]):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        image = self.images[i]
        return self.transform(image), self.transform(image), i


def reference_rate(setup: Setup, settings: Settings, images: torch.Tensor, workers: int) -> float:
    """Images/s of the reference pipeline: DataLoader + per-sample torchvision transforms,
    eager NCHW fp32, memory-bank NCE, ``loss.item()`` every step (as the reference loop)."""
    device, batch = setup.device, settings.train.batch_size
    dataset = _TwoViews(images, per_sample_pipeline(settings.augment, settings.data.image_size))
    loader = DataLoader(
        dataset, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
    )  # fmt: skip
    model = build_candidate(DARTS_V2, settings.model, settings.seed, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.train.lr, momentum=0.9)
    bank = MemoryBankNCE(len(images), model.proj_dim, temperature=settings.train.temperature)
    bank = bank.to(device)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        while True:
            yield from loader

    feed = batches()
    started = 0.0
    for i in range(3 + setup.steps):
        if i == 3:
            synchronize(device)
            started = time.perf_counter()
        view1, view2, index = (t.to(device, non_blocking=True) for t in next(feed))
        loss = bank(model(view1), model(view2), index)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        float(loss.item())
    synchronize(device)
    return setup.steps * batch / (time.perf_counter() - started)


def candidate_throughput(setup: Setup, report: Report) -> None:
    """Rows: eager (with and without per-step sync), the chosen plan, the reference pipeline."""
    settings = setup.settings("train.max_steps_per_epoch=null")
    data = make_search_data(load_images(settings.data), settings.data)
    images = data.train.images.to(setup.device)
    rates: dict[str, float] = {}

    def measure(key: str, rate: Callable[[], float]) -> Callable[[], tuple[str, str]]:
        def run() -> tuple[str, str]:
            rates[key] = rate()
            return f"{rates[key]:,.0f} images/s", ""

        return run

    eager = StepPlan("nchw")
    check(report, "candidate: eager NCHW fp32 + loss.item() per step (before issue 12)",
          measure("eager_sync", lambda: candidate_rate(setup, settings, eager, images,
                                                        read_loss_each_step=True)))  # fmt: skip
    check(report, "candidate: eager NCHW fp32, no host sync per step",
          measure("eager", lambda: candidate_rate(setup, settings, eager, images)))  # fmt: skip

    def optimised() -> tuple[str, str]:
        model = build_candidate(DARTS_V2, settings.model, settings.seed, setup.device)
        per_epoch = len(images) // settings.train.batch_size
        task = proxy_task(settings)
        plan = choose_plan(model, images, task, setup.device,
                           total_steps=settings.train.epochs * per_epoch)  # fmt: skip
        rates["optimised"] = candidate_rate(setup, settings, plan, images)
        folder = task.autotune_dir or setup.out / "home" / "autotune"
        timings = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
        report.data["autotune"] = timings
        detail = "; ".join(
            ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in t["seconds"].items()) for t in timings
        )
        return f"{rates['optimised']:,.0f} images/s", f"plan {plan.name} (measured: {detail})"

    check(report, "candidate: plan chosen by the autotuner", optimised)
    cpu_images = data.train.images
    for workers in setup.workers:
        what = f"reference pipeline: DataLoader, {workers} workers, per-sample transforms"
        rate = partial(reference_rate, setup, settings, cpu_images, workers)
        check(report, what, measure(f"reference_{workers}", rate))
    report.data["candidate_images_per_s"] = rates
    if "optimised" in rates:
        ref = max((v for k, v in rates.items() if k.startswith("reference")), default=None)
        for base in ("eager_sync", "eager"):
            if base in rates:
                report.add(f"ratio optimised / {base}", f"{rates['optimised'] / rates[base]:.2f}x")
        if ref:
            report.add("ratio optimised / best reference", f"{rates['optimised'] / ref:.2f}x")


# -- the DARTS evaluation network ----------------------------------------------------------------


def eval_net_timings(setup: Setup, report: Report) -> None:
    """Rows: ms per supervised step of the DARTS CIFAR network per layout x precision."""
    c, layers, batch = (4, 4, 8) if setup.dry_run else (36, 20, 96)
    precisions = ("fp32", "bf16") if setup.device.type == "cuda" else ("fp32",)
    plans = [StepPlan(layout, precision) for layout in LAYOUTS for precision in precisions]

    def step_of(plan: StepPlan) -> Callable[[], None]:
        model = NetworkCIFAR(DARTS_V2, C=c, layers=layers, auxiliary=True, drop_path_prob=0.2)
        model = model.to(setup.device).train()
        plan.prepare(model)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.025, momentum=0.9)
        x = plan.images(torch.randn(batch, 3, 32, 32, device=setup.device))
        y = torch.randint(0, 10, (batch,), device=setup.device)

        def step() -> None:
            with plan.autocast(setup.device):
                logits, aux = model(x)
                loss = F.cross_entropy(logits, y)
                if aux is not None:
                    loss = loss + 0.4 * F.cross_entropy(aux, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return step

    def run() -> tuple[str, str]:
        options = {plan.name: step_of(plan) for plan in plans}
        repeat = 1 if setup.dry_run else 5
        costs = measure_in_turns(options, setup.device, warmup=1, repeat=repeat)
        report.data["eval_net_ms"] = {k: v * 1e3 for k, v in costs.items()}
        best = min(costs, key=lambda k: costs[k])
        text = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in costs.items())
        return f"fastest {best}", text

    check(report, f"evaluation network {layers} x {c}, batch {batch}: step time", run)


# -- CUDA paths ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tiny(setup: Setup, *overrides: str) -> tuple[Settings, Any]:
    settings = setup.settings("train.max_steps_per_epoch=3", *overrides, tiny=True)
    return settings, make_search_data(load_images(settings.data), settings.data)


def nccl_world_of_one(setup: Setup) -> tuple[str, str]:
    """A worker's process group with one rank (NCCL on CUDA, gloo on a CPU) trains a candidate."""
    settings, data = _tiny(setup)
    env = DistEnv(world_size=1, master_port=_free_port())
    join_process_group(env, setup.device)
    try:
        backend = torch.distributed.get_backend()
        model = build_candidate(DARTS_V2, settings.model, settings.seed, setup.device)
        result = train_candidate(model, data, proxy_task(settings), setup.device)
        agreed = agree_across_ranks((True, False), setup.device)
        flags = flags_backend()
    finally:
        destroy_distributed()
    ok = agreed == (True, False) and result.steps > 0 and result.train_loss == result.train_loss
    return ("PASS" if ok else "FAIL"), (
        f"backend {backend}, flags on {flags}, DDP trained {result.steps} steps, "
        f"loss {result.train_loss:.3f}, plan {result.plan}"
    )


def step_checks(setup: Setup, precision: str, loss: str) -> tuple[str, str]:
    """A few steps with ``precision`` autocast and ``loss``: finite, scaler/bank on the device."""
    if setup.device.type != "cuda" and precision != "fp32":
        return "skipped", "autocast is CUDA-only"
    settings, data = _tiny(setup, f"train.loss={loss}")
    images = data.train.images.to(setup.device)
    stepper, grid = _stepper(setup, settings, StepPlan("channels_last", precision), images)
    membank = stepper.criterion if isinstance(stepper.criterion, MemoryBank) else None
    bank_before = membank.bank.clone() if membank is not None else None
    for i in range(3):
        stepper(images, grid[i % len(grid)], i)
    stepper.check_finite("the checks")
    notes = [f"scaler enabled {stepper.scaler.is_enabled()}"]
    if stepper.scaler.is_enabled():
        notes.append(f"scale {stepper.scaler.get_scale():.0f}")
    if membank is not None and bank_before is not None:
        bank = membank.bank
        moved = int((bank != bank_before).any(dim=1).sum().item())
        norms = bank.norm(dim=1)
        notes.append(f"bank on {bank.device}, {moved} rows updated, norms {norms.min():.3f}-"
                     f"{norms.max():.3f}")  # fmt: skip
        if bank.device.type != setup.device.type or moved == 0:
            return "FAIL", "; ".join(notes)
    return "PASS", "; ".join(notes)


def no_sync_in_a_step(setup: Setup) -> tuple[str, str]:
    """Training steps under ``torch.cuda.set_sync_debug_mode('error')``: any sync raises."""
    if setup.device.type != "cuda":
        return "skipped", "CUDA only (tests/test_train_loop.py counts read-backs on the CPU)"
    settings, data = _tiny(setup, "train.loss=membank_nce")
    images = data.train.images.to(setup.device)
    stepper, grid = _stepper(setup, settings, StepPlan("channels_last"), images)
    for i in range(3):  # warm-up: allocator, cuDNN
        stepper(images, grid[i % len(grid)], i)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i in range(5):
            stepper(images, grid[i % len(grid)], 3 + i)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return "PASS", "5 steps (memory bank, channels_last) without a device sync"


def oom_is_pruned(setup: Setup) -> tuple[str, str]:
    """A real CUDA out-of-memory error (the allocator capped at 1 GiB above what is in use):
    the trial is told PRUNED with reason out_of_memory and its memory is released."""
    if setup.device.type != "cuda":
        return "skipped", "CUDA only"
    with tempfile.TemporaryDirectory() as home:
        settings = setup.settings(
            "study.name=gpu-oom", "train.batch_size=4096",
            "train.epochs=1", "train.max_steps_per_epoch=1", "train.perf=nchw", "train.amp=none",
            "search.n_trials=1", "search.max_consecutive_failures=1", home=Path(home),
        )  # fmt: skip
        bootstrap_study(settings)
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        total = torch.cuda.get_device_properties(setup.device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, (before + 2**30) / total))
        try:
            run_worker(settings)
            stopped = "no WorkerError"
        except WorkerError as exc:
            stopped = str(exc)
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0)
        after = torch.cuda.memory_allocated()
        (trial,) = load_study(settings, worker=0).study.get_trials()
        reason = str(trial.user_attrs.get(attrs.FAIL_REASON, ""))
    released = after - before < 2**20  # tensors of the trial freed (within 1 MiB)
    ok = trial.state.name == "PRUNED" and reason.startswith("out_of_memory") and released
    return ("PASS" if ok else "FAIL"), (
        f"trial {trial.state.name}, {reason[:80]!r}; allocated {before / 2**20:.0f} MiB before, "
        f"{after / 2**20:.0f} MiB after; worker: {stopped[:60]}"
    )


def end_to_end(setup: Setup) -> tuple[str, str]:
    """``launch/search.py`` on this device: 2 candidates of one epoch, as a user runs it."""
    args = ["experiment=csnas_paper", f"device={setup.device.type}", "train.epochs=1",
            "study.name=gpu-e2e"]  # fmt: skip
    if setup.dry_run or setup.data_path is None:
        args += ["data=digits"]
    else:
        args += ["data=npz", f"data.path={setup.data_path}"]
    args += ["debug=tiny", "search.n_trials=1"] if setup.dry_run else ["search.n_trials=2"]
    home = setup.out / "home"
    env = {**os.environ, "CNAS_HOME": str(home), "WANDB_MODE": "disabled"}
    subprocess.run([sys.executable, str(ROOT / "launch" / "search.py"), *args], cwd=ROOT,
                   env=env, check=True, capture_output=True, text=True, timeout=400)  # fmt: skip
    storage = f"sqlite:///{home}/cnas.db"
    study = optuna.load_study(study_name="gpu-e2e", storage=storage)
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    rates = [f"{t.user_attrs[attrs.IMAGES_PER_S]:,.0f}" for t in done]
    walls = [f"{t.user_attrs[attrs.WALL_S]:.1f}" for t in done]
    plans = {t.user_attrs.get(attrs.STEP_PLAN) for t in done}
    return f"{len(done)} COMPLETE", (
        f"images/s {', '.join(rates)}; s/candidate {', '.join(walls)}; plan {plans}"
    )


def cuda_tests(setup: Setup) -> tuple[str, str]:
    """The two tests that skip without CUDA, run with pytest (no conftest: no services)."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--noconftest", "-o", "addopts=", "-q", "-rs",
         "-p", "no:cacheprovider", *CUDA_TESTS],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    summary = lines[-1] if lines else f"pytest exited with {result.returncode}"
    if setup.device.type != "cuda":
        return ("skipped" if "2 skipped" in summary else "FAIL"), summary
    passed = result.returncode == 0 and "2 passed" in summary
    return ("PASS" if passed else "FAIL"), summary


def main() -> None:
    """Run every check and print / write the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / ".gpu-data" / "cifar10_train_10k.npz")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ROOT / "gpu-out")))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--workers", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes")
    args = parser.parse_args()
    dry = args.dry_run or not torch.cuda.is_available()
    device = torch.device("cpu" if dry else "cuda")
    if dry:
        torch.set_num_threads(1)  # tiny sizes: one thread, and no fight with other processes
    data_path = args.data.resolve() if args.data.exists() else None
    args.out.mkdir(parents=True, exist_ok=True)
    setup = Setup(device, dry, args.out.resolve(), data_path, 2 if dry else args.steps,
                  (2,) if dry else tuple(args.workers))  # fmt: skip
    report = Report()
    props = f"{torch.cuda.get_device_name()}, CUDA {torch.version.cuda}" if not dry else "CPU"
    print(f"# gpu_checks on {device_name(device)} ({props}), torch {torch.__version__}, "
          f"data {data_path or 'digits (no CIFAR npz found)'}\n")  # fmt: skip
    print("| check / measurement | result | note |\n|---|---|---|", flush=True)
    candidate_throughput(setup, report)
    eval_net_timings(setup, report)
    check(report, "worker process group, world size 1 (NCCL on CUDA)",
          lambda: nccl_world_of_one(setup))  # fmt: skip
    check(report, "AMP fp16 with the grad scaler", lambda: step_checks(setup, "fp16", "ntxent"))
    check(report, "AMP bf16", lambda: step_checks(setup, "bf16", "ntxent"))
    check(report, "memory bank on the device", lambda: step_checks(setup, "fp32", "membank_nce"))
    check(report, "no host sync inside a training step", lambda: no_sync_in_a_step(setup))
    check(report, "real CUDA OOM -> PRUNED, memory released", lambda: oom_is_pruned(setup))
    check(report, "end-to-end search (launch/search.py)", lambda: end_to_end(setup))
    check(report, "the CUDA tests that skip on CPU", lambda: cuda_tests(setup))
    (setup.out / "gpu_results.md").write_text(report.markdown() + "\n")
    (setup.out / "gpu_results.json").write_text(json.dumps(
        {"rows": report.rows, **report.data}, indent=2, default=str))  # fmt: skip
    print(f"\nwritten: {setup.out / 'gpu_results.md'}")


if __name__ == "__main__":
    main()
