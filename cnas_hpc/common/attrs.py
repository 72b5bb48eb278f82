"""Names of the study and trial attributes cnas-hpc records.

Stable: reports, resumes and optuna-dashboard users read them.
"""

from __future__ import annotations

from typing import Final

GENOTYPE: Final = "cnas:genotype"
ARCH_HASH: Final = "cnas:arch_hash"
WORKER: Final = "cnas:worker"
WORKER_INDEX: Final = "cnas:worker_index"
HOST: Final = "cnas:host"
WORLD_SIZE: Final = "cnas:world_size"
ARRAY_JOB: Final = "cnas:slurm_array_job_id"
ARRAY_TASK: Final = "cnas:slurm_array_task_id"
FAIL_REASON: Final = "cnas:fail_reason"
N_PARAMS: Final = "cnas:n_params"
MACS: Final = "cnas:macs"
WALL_S: Final = "cnas:wall_s"
EPOCHS_DONE: Final = "cnas:epochs_done"
TRAIN_LOSS: Final = "cnas:train_loss"
VAL_LOSS: Final = "cnas:val_loss"
KNN_ACCURACY: Final = "cnas:knn_accuracy"
NASWOT: Final = "cnas:naswot"
SYNFLOW: Final = "cnas:synflow"
ZERO_COST_S: Final = "cnas:zero_cost_s"
SCREENED: Final = "cnas:screened"
IMAGES_PER_S: Final = "cnas:images_per_s"
RETRY_OF: Final = "cnas:retry_of"
RETRY_COUNT: Final = "cnas:retry_count"
RETRIED_FROM: Final = "cnas:retried_from"
# Study-level: what the study was built for.
STUDY_SPACE: Final = "cnas:space"
STUDY_OBJECTIVE: Final = "cnas:objective"
#: Study-level: the scoring setup its scores were made with (``section.key -> value``).
STUDY_SCORE_SETUP: Final = "cnas:score_setup"
#: Study-level: the SLURM arrays submitted for the study (most recent last).
STUDY_ARRAYS: Final = "cnas:slurm_arrays"
REQUEUES: Final = "cnas:requeues"
# Known cells (search.enqueue): the study's list of enqueued specs, and a trial's own spec.
ENQUEUED: Final = "cnas:enqueued"
ENQUEUED_AS: Final = "cnas:enqueued_as"
RESUMED_FROM_EPOCH: Final = "cnas:resumed_from_epoch"
#: The epoch after which a multi-fidelity pruner stopped the trial (PRUNED trials only).
PRUNED_AT_EPOCH: Final = "cnas:pruned_at_epoch"
#: How the trial's training steps ran (layout, precision, compile, threads), chosen by measurement.
STEP_PLAN: Final = "cnas:step_plan"
JOB: Final = "cnas:job_id"
#: torch intra-op threads the worker trained with (sized from its CPU allocation).
CPU_THREADS: Final = "cnas:cpu_threads"
#: The SLURM job a trial waits for while that job is requeued ("" once it resumed).
HELD_BY_JOB: Final = "cnas:held_by_job"
# Cost-aware search (search.objectives, search.constraints; README "Searching under a budget").
#: Study-level: the objective names in the order of ``trial.values`` (multi-objective studies
#: only; a single-objective study is named by ``cnas:objective``).
STUDY_OBJECTIVES: Final = "cnas:objectives"
#: Parameters of the EVALUATION-size network (DARTS's count, auxiliary head excluded).
COST_PARAMS: Final = "cnas:cost_params"
#: Multiply-adds of one image at evaluation resolution.
COST_MACS: Final = "cnas:cost_macs"
#: Median forward latency on ``cnas:cost_device`` (only when measured).
COST_LATENCY_MS: Final = "cnas:cost_latency_ms"
COST_DEVICE: Final = "cnas:cost_device"
COST_NETWORK: Final = "cnas:cost_network"
#: Whether this trial took its costs from the study's cache (measured by an earlier trial).
COST_CACHED: Final = "cnas:cost_cached"
#: The cell breaks a ``search.constraints`` limit (Optuna's own values: system attr
#: ``constraints``, feasible iff all <= 0).
INFEASIBLE: Final = "cnas:infeasible"
CONSTRAINTS: Final = "cnas:constraints"
#: Study-level cache of measured costs: ``<prefix><device>:<arch hash>`` -> {params, macs, ...}.
COST_CACHE_PREFIX: Final = "cnas:cost:"
