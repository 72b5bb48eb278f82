"""One planned cell on every rank of a task: train it from scratch and/or probe it, record it.

Contract:
    * Every rank runs a :class:`CellRunner` for the same row; only global rank 0 holds the
      database engine and the observers, so only rank 0 writes results.
    * :meth:`CellRunner.run` returns ``None`` when the cell completed, ``"stopped"`` when a
      preemption stopped it (checkpointed; the row stays RUNNING for the requeued job), else the
      failure reason (rank 0 recorded the row FAIL). A failing cell never stops the others.
    * Results go where users look: the ``evaluations`` table, and for a cell that came from a
      study, the source trial's user attribute ``cnas:eval/<evaluation name>``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import traceback
from pathlib import Path
from typing import Any

import sqlalchemy
import torch

from cnas_hpc.common.observers import ObserverGroup
from cnas_hpc.config.evaluate import EvalSettings
from cnas_hpc.config.model import ProxyConfig
from cnas_hpc.config.train import TrainConfig
from cnas_hpc.data.labeled import LabeledData
from cnas_hpc.data.splits import SearchData
from cnas_hpc.distributed.env import DistEnv
from cnas_hpc.distributed.preemption import Preemption
from cnas_hpc.evaluate import store
from cnas_hpc.evaluate.observer import EvalInfo
from cnas_hpc.evaluate.speed import choose_layout
from cnas_hpc.models.complexity import count_macs, count_parameters
from cnas_hpc.space.genotype import Genotype, genotype_from_json
from cnas_hpc.ssl.augment import BatchAugment
from cnas_hpc.study.optuna_internals import set_user_attr_of_finished_trial
from cnas_hpc.study.storage import make_storage
from cnas_hpc.train.checkpoint import (
    Checkpointing,
    TrainState,
    checkpoint_path,
    load_checkpoint,
    remove_checkpoint,
    save_checkpoint,
)
from cnas_hpc.train.loop import build_candidate, train_candidate
from cnas_hpc.train.memory import release_memory
from cnas_hpc.train.outcome import TrainingAbortedError
from cnas_hpc.train.probe import encoder_features, knn_accuracy, linear_probe_accuracy
from cnas_hpc.train.step import ProxyTask
from cnas_hpc.train.supervised import (
    EvalEpoch,
    SupervisedTask,
    build_eval_network,
    train_supervised,
)

log = logging.getLogger(__name__)


def eval_attr(name: str) -> str:
    """The source trial's user attribute that holds evaluation ``name``'s result."""
    return f"cnas:eval/{name}"


class CellRunner:
    """Evaluates one row of the ``evaluations`` table on this rank (see the module docstring)."""

    def __init__(
        self,
        row: store.Row,
        settings: EvalSettings,
        env: DistEnv,
        device: torch.device,
        data: LabeledData,
        engine: sqlalchemy.Engine | None,
        observers: ObserverGroup,
        preemption: Preemption,
        *,
        max_threads: int | None = None,
    ) -> None:
        """``max_threads``: the task's intra-op threads from its allocation, the most the
        probe's measured step plan may try (``None``: the cores the process can see)."""
        self.row, self.settings, self.env, self.device = row, settings, env, device
        self.max_threads = max_threads
        self.data, self.engine = data, engine
        self.observers, self.preemption = observers, preemption
        self.genotype: Genotype = genotype_from_json(row.genotype)
        self.results: dict[str, Any] = {}
        self.started = time.perf_counter()
        folder = settings.checkpoint_root / settings.name
        self.supervised_path: Path = checkpoint_path(folder, "supervised", row.cell_index)
        self.probe_path: Path = checkpoint_path(folder, "probe", row.cell_index)

    # -- the cell -------------------------------------------------------------------------------

    def run(self) -> str | None:
        """Evaluate the cell (claimed by this worker); see the module docstring for the return
        value."""
        try:
            if self.settings.eval.method in ("supervised", "both"):
                self._supervised()
            if self.settings.eval.method in ("probe", "both"):
                self._probe()
        except TrainingAbortedError as exc:
            if exc.reason == "stopped":
                self.observers.notify("cell_finished", "INTERRUPTED", self.results)
                return "stopped"
            return self._fail(exc)
        except (ValueError, RuntimeError) as exc:
            return self._fail(exc)
        finally:
            release_memory(self.device)
        self._complete()
        return None

    @property
    def worker(self) -> str:
        """Who evaluates the cell (the SLURM job or the local process)."""
        return self.env.worker_label

    def _info(self, resume: TrainState | None, epochs: int) -> EvalInfo:
        row = self.row
        return EvalInfo(
            name=self.settings.name,
            cell_index=row.cell_index,
            cell_key=row.cell_key,
            genotype=self.genotype,
            method=self.settings.eval.method,
            protocol_name=row.protocol_name,
            epochs=epochs,
            worker=self.worker,
            world_size=self.env.world_size,
            study_name=row.study_name,
            trial_number=row.trial_number,
            settings={
                "protocol": dataclasses.asdict(self.settings.protocol),
                "probe": dataclasses.asdict(self.settings.probe),
                "seed": self.settings.eval.seed,
            },
            segment=1 if resume is not None else 0,
            start_epoch=resume.epoch if resume is not None else 0,
        )

    # -- supervised training from scratch -------------------------------------------------------

    def _supervised(self) -> None:
        settings, protocol = self.settings, self.settings.protocol
        model = build_eval_network(
            self.genotype, protocol, self.data.num_classes, settings.eval.seed
        )
        image = (3, protocol.image_size, protocol.image_size)
        self.results.update(params=count_parameters(model), macs=count_macs(model, image))
        if protocol.max_macs is not None and self.results["macs"] > protocol.max_macs:
            raise ValueError(
                f"{self.results['macs'] / 1e6:.0f} M MACs per image exceed protocol.max_macs="
                f"{protocol.max_macs / 1e6:.0f} M: lower protocol.channels"
            )
        task = SupervisedTask(protocol, self.data.num_classes, settings.eval.seed)
        resume = self._load(self.supervised_path)
        # A resumed cell keeps the layout its checkpoint recorded (a new choice rounds otherwise).
        task = choose_layout(
            model, task, self.data, self.device,
            cache_dir=Path(settings.output_dir) / "autotune", world_size=self.env.world_size,
            stored=resume.plan if resume is not None else None,
        )  # fmt: skip
        model = model.to(self.device).to(memory_format=task.memory_format)
        self.observers.notify(
            "cell_started",
            self._info(resume, protocol.epochs),
            n_params=self.results["params"],
            macs=self.results["macs"],
        )
        result = train_supervised(
            model,
            self.data,
            task,
            self.device,
            on_epoch=self.on_epoch,
            should_stop=self.stop_requested,
            checkpointing=self._supervised_checkpointing(resume),
        )
        self.results.update(
            test_accuracy=result.test_accuracy,
            test_error=1.0 - result.test_accuracy,
            test_loss=result.test_loss,
            epochs_done=result.epochs_done,
            images_per_s=result.images_per_s,
            memory_format="channels_last"
            if task.memory_format == torch.channels_last
            else "contiguous",
            amp=str(task.amp_dtype).replace("torch.", "") if task.amp_dtype else "none",
        )

    def _load(self, path: Path) -> TrainState | None:
        if not self.settings.checkpoint.enabled:
            return None
        return load_checkpoint(path, genotype_json=self.row.genotype)

    def _saver(self, path: Path) -> Any:
        if not (self.env.is_main and self.settings.checkpoint.enabled):
            return None
        return lambda state: save_checkpoint(state, path)

    def _supervised_checkpointing(self, resume: TrainState | None) -> Checkpointing:
        every = self.settings.checkpoint.every_minutes * 60
        return Checkpointing(
            save=self._saver(self.supervised_path),
            every_s=every if self.settings.checkpoint.enabled else math.inf,
            resume=resume,
            trial=self.row.cell_index,
            genotype_json=self.row.genotype,
        )

    # -- the label-free probe -------------------------------------------------------------------

    def _probe_task(self) -> tuple[ProxyTask, ProxyConfig]:
        probe = self.settings.probe
        train = TrainConfig(
            epochs=probe.epochs,
            batch_size=probe.batch_size,
            lr=probe.lr,
            temperature=probe.temperature,
            loss="ntxent",
            log_every_steps=max(1, probe.epochs),
        )
        task = ProxyTask(
            train,
            self.settings.augment,
            self.settings.protocol.image_size,
            self.settings.eval.seed,
            max_threads=self.max_threads,
        )
        return task, ProxyConfig(cells=probe.cells, channels=probe.channels)

    def _probe(self) -> None:
        task, shape = self._probe_task()
        model = build_candidate(self.genotype, shape, task.seed, self.device)
        resume = self._load(self.probe_path)
        if self.settings.eval.method == "probe":
            image = (3, task.image_size, task.image_size)
            self.results.update(params=count_parameters(model), macs=count_macs(model, image))
            self.observers.notify(
                "cell_started",
                self._info(resume, task.train.epochs),
                n_params=self.results["params"],
                macs=self.results["macs"],
            )
        # The encoder never sees a label: its training split is stripped of them.
        unlabeled = dataclasses.replace(self.data.train, labels=None)
        train_candidate(
            model,
            SearchData(train=unlabeled, val=None, labeled=None),
            task,
            self.device,
            should_stop=self.stop_requested,
            checkpointing=Checkpointing(
                save=self._saver(self.probe_path),
                every_s=self.settings.checkpoint.every_minutes * 60,
                resume=resume,
                trial=self.row.cell_index,
                genotype_json=self.row.genotype,
            ),
        )
        self._score_probe(model, task)

    def _score_probe(self, model: torch.nn.Module, task: ProxyTask) -> None:
        augment = BatchAugment(task.augment, task.image_size)
        assert self.data.train.labels is not None and self.data.test.labels is not None
        train_x = encoder_features(model, self.data.train, augment, self.device)  # type: ignore[arg-type]
        test_x = encoder_features(model, self.data.test, augment, self.device)  # type: ignore[arg-type]
        train_y = self.data.train.labels.to(self.device)
        test_y = self.data.test.labels.to(self.device)
        probe = self.settings.probe
        self.results.update(
            probe_knn_accuracy=knn_accuracy(train_x, train_y, test_x, test_y, k=probe.knn_k),
            probe_linear_accuracy=linear_probe_accuracy(
                train_x, train_y, test_x, test_y,
                epochs=probe.linear_epochs, lr=probe.linear_lr, seed=task.seed,
            ),
        )  # fmt: skip

    # -- hooks ----------------------------------------------------------------------------------

    def stop_requested(self) -> bool:
        """Whether a preemption or timeout signal asked this process to stop."""
        return self.preemption.requested

    def on_epoch(self, metrics: EvalEpoch) -> None:
        """Per-epoch metrics to the observers; progress into the row (rank 0)."""
        if self.engine is not None:
            store.progress(
                self.engine, self.settings.name, self.row.cell_index, epochs_done=metrics.epoch
            )
        self.observers.notify("epoch", metrics.epoch, dataclasses.asdict(metrics))

    # -- the outcome ----------------------------------------------------------------------------

    def _complete(self) -> None:
        self.results["wall_s"] = time.perf_counter() - self.started
        if self.engine is not None:
            columns = {k: v for k, v in self.results.items() if k in store.RESULT_COLUMNS}
            store.finish(
                self.engine,
                self.settings.name,
                self.row.cell_index,
                state=store.COMPLETE,
                worker=self.worker,
                **{k: v for k, v in columns.items() if k != "worker"},
            )
            self._record_on_trial()
        self.observers.notify("cell_finished", store.COMPLETE, self.results)
        for path in (self.supervised_path, self.probe_path):
            if self.env.is_main:
                remove_checkpoint(path)

    def _record_on_trial(self) -> None:
        """The result, as JSON, in the source trial's ``cnas:eval/<name>`` user attribute."""
        row = self.row
        if row.source != "study" or row.study_name is None or row.trial_number is None:
            return
        storage = make_storage(self.settings.study, create_tables=False)
        try:
            trial_id = storage.get_trial_id_from_study_id_trial_number(
                storage.get_study_id_from_name(row.study_name), row.trial_number
            )
            value = {
                key: self.results.get(key)
                for key in store.TRIAL_RESULT_COLUMNS
                if self.results.get(key) is not None
            }
            value["protocol"] = row.protocol_name
            name = eval_attr(self.settings.name)
            set_user_attr_of_finished_trial(storage.engine, trial_id, name, value)
        except (KeyError, sqlalchemy.exc.SQLAlchemyError) as exc:
            log.warning("could not record the result on trial %d: %s", row.trial_number, exc)
        finally:
            storage.engine.dispose()

    def _fail(self, exc: BaseException) -> str:
        reason = getattr(exc, "reason", type(exc).__name__)
        message = f"{reason}: {exc}".splitlines()[0]
        log.debug("cell %s failed:\n%s", self.row.cell_key, traceback.format_exc())
        log.error("cell %d (%s) failed: %s", self.row.cell_index, self.row.cell_key, message)
        self.results.update(wall_s=time.perf_counter() - self.started, fail_reason=message)
        if self.engine is not None:
            store.finish(
                self.engine,
                self.settings.name,
                self.row.cell_index,
                state=store.FAIL,
                fail_reason=message,
                wall_s=self.results["wall_s"],
            )
        self.observers.notify("cell_finished", store.FAIL, self.results)
        return message
