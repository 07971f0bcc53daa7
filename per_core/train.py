"""The trainer and its CLI.

    python -m per_core.train --preset demo --method per --epochs 30 --out runs/demo/per [--seed 0]
                             [--lam 3e-3] [--resume | --overwrite] [--record all|layer3,layer6|none]

One epoch: train on shuffled batches (optionally with gradient clipping), evaluate on the
validation split, record activations (when asked), then write metrics.jsonl, the activation file
and checkpoints/last.pt, each atomically. A killed run continues with ``--resume`` from the last
finished epoch and reaches bit-identical results on the CPU with the same number of threads
(every RNG state is checkpointed; the order of float sums depends on the thread count).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
import typing
from collections.abc import Sequence, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import per_core
from per_core.allocator import malloc_setting, tune_malloc
from per_core.baselines import VCL, L1Penalty, L2Penalty
from per_core.cli import (
    OneLineArgumentParser,
    bar_shown,
    nonempty_folder,
    nonempty_path,
    note,
    parse_per_locations,
    run_command,
    say,
)
from per_core.configs import METHODS, PRESETS, SMOKE_STEPS, TRAINER_FIELDS, TrainConfig, get_preset
from per_core.distributed import (
    DistEnv,
    convert_sync_batchnorm,
    exit_without_teardown,
    gloo_ranks,
    init_from_env,
    resolve_device,
    shutdown,
)
from per_core.models import MODELS, build_model
from per_core.progress import tqdm
from per_core.regularizer import PER
from per_core.rundir import RunDir, RunDirError, enclosing_run, holds_runs
from per_core.seeds import stream_seed
from per_core.tasks import Task, build_task, reads_data_dir

__all__ = ["TrainingError", "check_method", "flag_notes", "main", "methods_for", "train", "validate_config"]


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is intact."""


def package_versions() -> dict[str, str]:
    import scipy

    return {
        "per_core": per_core.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
    }


def param_groups(model: nn.Module, weight_decay: float, kind: str = "default", lr: float = 0.0) -> list[dict[str, Any]]:
    """The optimizer's parameter groups.

    ``default``: weight decay on weight matrices and kernels (p.ndim > 1) only, not on biases or norm
    scales. ``fixup``: as Fixup's CIFAR script, parameters named ``bias`` or ``scale`` (the Fixup
    scalars, biases) at ``lr / 10``, the rest at the optimizer's lr; weight decay on all of them.
    """
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if kind == "fixup":
        if not lr > 0:
            raise ValueError(f"param_groups(kind='fixup') needs the learning rate lr > 0, got {lr!r}")
        scalar = [p for n, p in trained if n.rsplit(".", 1)[-1] in ("bias", "scale")]
        rest = [p for n, p in trained if n.rsplit(".", 1)[-1] not in ("bias", "scale")]
        return [
            {"params": rest, "weight_decay": weight_decay},
            {"params": scalar, "lr": lr / 10, "weight_decay": weight_decay},
        ]
    decay = [p for _, p in trained if p.ndim > 1]
    no_decay = [p for _, p in trained if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def norm_for(method: str) -> str:
    """The model's ``norm`` argument for a method: the normalization methods name their layer."""
    return method if method in ("bn", "dbn", "rbn") else "none"


PENALTIES = {"l1": L1Penalty, "l2": L2Penalty, "vcl": VCL}
#: Methods that use ``lam``: PER and the loss penalties.
LAM_METHODS = ("per", *PENALTIES)
#: Methods that need batch-first layer outputs (VCL refuses recurrent modules).
BATCH_FIRST_METHODS = ("vcl",)


def model_norms(model: str) -> tuple[str, ...]:
    """The ``norm`` values model ``model`` declares (the Literal of its factory's, or its class's, ``norm``)."""
    factory = MODELS[model]
    hints = typing.get_type_hints(factory)
    if "norm" not in hints and isinstance(hints.get("return"), type):  # a factory passing **kwargs to its class
        hints = typing.get_type_hints(hints["return"].__init__)
    return typing.get_args(hints.get("norm")) or ("none",)


def is_recurrent(model: str) -> bool:
    """Whether ``model`` is recurrent: only recurrent models declare recurrent BN (``norm='rbn'``)."""
    return "rbn" in model_norms(model)


def methods_for(model: str) -> list[str]:
    """The methods model ``model`` can train with: its declared norms, and no batch-first penalty on an RNN."""
    norms, recurrent = model_norms(model), is_recurrent(model)
    return [m for m in METHODS if norm_for(m) in norms and not (recurrent and m in BATCH_FIRST_METHODS)]


def check_method(cfg: TrainConfig) -> None:
    """Raise ValueError when ``cfg.method`` does not apply to ``cfg.model``, naming the methods that do."""
    if cfg.model not in MODELS or cfg.method in (takes := methods_for(cfg.model)):
        return  # an unknown model is reported by build_model
    presets = {name: make().model for name, make in PRESETS.items()}
    models = list(dict.fromkeys(m for m in presets.values() if m in MODELS and cfg.method in methods_for(m)))
    example = next((name for name, m in presets.items() if m in models), None)
    where = f"the {', '.join(models)} presets (e.g. {example})" if models else "no preset"
    raise ValueError(
        f"--method {cfg.method} is for {where}; preset {cfg.preset} ({cfg.model}) takes {', '.join(takes)}"
    )


def validate_config(cfg: TrainConfig) -> None:
    """Every check of a config that needs no data and no run directory: field ranges, then method vs model."""
    cfg.validate()
    check_method(cfg)


@dataclass
class Setup:
    """Everything a run is made of; built identically for a fresh run and a resumed one."""

    cfg: TrainConfig
    env: DistEnv  # rank, world size and device (one process: rank 0 of 1)
    device: torch.device
    task: Task
    model: nn.Module  # what the training step calls: the DDP wrapper under data parallelism
    module: nn.Module  # the model itself (hooks, evaluation, checkpoints)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    per: PER  # the regularizer for method 'per'; a lam=0 monitor of L_per for the others
    penalty: Any  # L1Penalty / L2Penalty / VCL for the loss-penalty methods, else None
    recorder: Any  # analysis.recorder.ActivationRecorder or None
    data_generator: torch.Generator  # data order: the same seed on every rank
    aug_generator: torch.Generator  # augmentation: a seed per rank
    # tasks with best_of_validation: the best validation epoch so far, its val_loss and a copy of its model's
    # state (None where a checkpoint from before this tracking cannot tell it)
    best: dict[str, Any] | None = None


def build(cfg: TrainConfig, env: DistEnv | None = None) -> Setup:
    """Seed, then build task, model, optimizer, schedule, PER and recorder from ``cfg``.

    Under data parallelism (``env.world_size > 1``) the model is wrapped in DistributedDataParallel,
    BatchNorm is synchronized across ranks when ``cfg.sync_bn``. Every random stream has its own
    seed, derived from ``cfg.seed`` (and the rank, for per-rank streams) by :mod:`per_core.seeds`.
    """
    validate_config(cfg)
    env = env or DistEnv(device=resolve_device(cfg.device))
    device = env.device
    if cfg.batch_size % env.world_size:
        raise ValueError(
            f"--batch-size {cfg.batch_size} is not divisible by the {env.world_size} ranks: every rank must get an "
            f"equal share of each batch; use a multiple of {env.world_size}"
        )
    if env.distributed and cfg.method in ("dbn", "rbn", "vcl") and env.is_main:
        what = (
            "draws its two subsets from each rank's own share of the batch"
            if cfg.method == "vcl"
            else "normalizes with each rank's own batch statistics (only BatchNorm2d is synchronized across ranks)"
        )
        _say(f"note: {cfg.method} {what}; results differ from one process at the full batch")
    rank = env.rank
    torch.manual_seed(stream_seed(cfg.seed, "init"))  # the trainer owns the process: identical init on every rank
    task = build_task(cfg, device)
    module = build_model(cfg.model, **task.model_kwargs(), norm=norm_for(cfg.method), **cfg.model_args).to(device)
    model: nn.Module = module
    torch.manual_seed(stream_seed(cfg.seed, "dropout", rank))  # dropout and the rest: independent per rank
    if env.distributed:
        if cfg.sync_bn:
            module = convert_sync_batchnorm(module, device)
        model = nn.parallel.DistributedDataParallel(
            module, device_ids=[env.local_rank] if device.type == "cuda" else None
        )
    penalty = _build_penalty(cfg, module, task, device)
    groups = param_groups(module, cfg.weight_decay, cfg.optimizer_groups, cfg.lr)
    if isinstance(penalty, VCL):  # its learned betas train with the model, with weight decay as in the reference code
        groups.append({"params": list(penalty.parameters()), "weight_decay": cfg.weight_decay})
    optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.schedule == "plateau":
        # any decrease of the validation loss counts as one (threshold 0), as in pytorch/examples' word-LM
        # ("if not best_val_loss or val_loss < best_val_loss"); torch's default threshold 1e-4 cut the lr also
        # after an improvement smaller than 1e-4 relative (0.03 ppl at ppl 80)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=cfg.gamma, patience=0, threshold=0.0)
    else:
        scheduler = _multistep(optimizer, cfg)
    lam = cfg.lam if cfg.method == "per" else 0.0
    per = PER(
        module.pre_activations(),
        lam,
        cfg.n_slices,
        seed=stream_seed(cfg.seed, "slices"),  # the same slices on every rank
        locations=cfg.per_locations,
        locations_seed=stream_seed(cfg.seed, "locations", rank),
    )
    recorder = None
    if cfg.record:
        from analysis.recorder import ActivationRecorder

        # "all", or labels of module.pre_activations() / module names, resolved by the recorder
        layers = "all" if cfg.record == "all" else [x.strip() for x in cfg.record.split(",") if x.strip()]
        try:
            recorder = ActivationRecorder(
                module,
                layers,
                seed=stream_seed(cfg.seed, "recorder", rank),  # independent reservoir keys per rank
                train_every=cfg.record_train_every,
                reservoir_every=cfg.record_reservoir_every,
                reservoir_splits=("train", "eval"),
            )
        except ValueError as err:  # the settings are validated with the config: this is about the layers
            raise ValueError(f"--record {cfg.record}: {err}") from None
    data_generator = torch.Generator().manual_seed(stream_seed(cfg.seed, "data"))
    aug_generator = torch.Generator().manual_seed(stream_seed(cfg.seed, "augment", rank))
    return Setup(
        cfg,
        env,
        device,
        task,
        model,
        module,
        optimizer,
        scheduler,
        per,
        penalty,
        recorder,
        data_generator,
        aug_generator,
    )


def _multistep(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """lr x ``gamma`` at each milestone (or x ``gammas[i]`` at milestone i), after ``warmup_epochs`` at lr / 10.

    After e finished epochs the next one trains at lr_e = lr_0 w_e prod_{m_i <= e} gamma_i, with w_e = 1/10
    for e < warmup_epochs and 1 after (He et al. 2016, Section 4.2: ResNet-110 starts at 0.01, then 0.1).
    """
    if cfg.gammas is None and not cfg.warmup_epochs:  # the scheduler whose state earlier checkpoints hold
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=cfg.milestones, gamma=cfg.gamma)
    steps = list(zip(cfg.milestones, cfg.gammas or [cfg.gamma] * len(cfg.milestones), strict=True))
    warm = cfg.warmup_epochs
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: (0.1 if e < warm else 1.0) * math.prod(g for m, g in steps if e >= m)
    )


def _build_penalty(cfg: TrainConfig, module: nn.Module, task: Task, device: torch.device) -> Any:
    """The loss penalty of a vcl/l1/l2 run (None for the other methods).

    VCL is the paper's: a learned beta per unit (350,460 on the 11-layer CNN for CIFAR, the ~350K
    parameters the paper counts), created by one training-mode forward pass of two validation images
    here, before the optimizer is built, as the reference code does. That pass runs on a copy of the
    random state, so the run's random streams are those of a run without it.
    """
    if cfg.method not in PENALTIES:
        return None
    if cfg.method != "vcl":
        return PENALTIES[cfg.method](module.pre_activations(), cfg.lam)
    penalty = VCL(module.pre_activations(), cfg.lam, learn_beta=True)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.enable_grad():
        module(task.record_batch()[:2])
    penalty.loss()  # drops that pass's terms
    return penalty


def _rng_state(s: Setup) -> dict[str, Any]:
    """This rank's RNG states (dropout, data order, augmentation, PER's and the recorder's generators)."""
    state = {"torch": torch.get_rng_state(), "data": s.data_generator.get_state(), "aug": s.aug_generator.get_state()}
    state["per"] = s.per.state_dict()  # the slices are shared, the locations (data parallel) are per rank
    if s.recorder is not None:
        state["recorder"] = s.recorder.state_dict()  # reservoir keys: per rank
    if s.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(s.device)
    return state


def _set_rng_state(s: Setup, state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    s.data_generator.set_state(state["data"])
    s.aug_generator.set_state(state["aug"])
    if "per" in state:  # absent from checkpoints before per-rank states (load_checkpoint loads rank 0's then)
        s.per.load_state_dict(state["per"])
    if s.recorder is not None and state.get("recorder") is not None:
        s.recorder.load_state_dict(state["recorder"])
    if "cuda" in state and s.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], s.device)


def save_checkpoint(run: RunDir, s: Setup, epoch: int, metrics: list[dict[str, Any]]) -> None:
    """Rank 0 writes the checkpoint; the RNG states of every rank go into it (a collective)."""
    rng = s.env.all_gather_object(_rng_state(s))
    if not s.env.is_main:
        return
    run.save_checkpoint(
        {
            "epoch": epoch,
            "config": s.cfg.to_dict(),
            "model": s.module.state_dict(),
            "optimizer": s.optimizer.state_dict(),
            "scheduler": s.scheduler.state_dict(),
            "rng": rng[0],
            "rng_ranks": rng,
            "per": s.per.state_dict(),
            "penalty": s.penalty.state_dict() if isinstance(s.penalty, VCL) else None,
            "recorder": s.recorder.state_dict() if s.recorder is not None else None,
            "metrics": metrics,
            "best": None
            if s.best is None
            else {  # the model of the best epoch; None for this epoch's own (stored once, above) or where unknown
                "epoch": s.best["epoch"],
                "val_loss": s.best["val_loss"],
                "model": None if s.best["epoch"] == epoch else s.best["state"],
            },
        }
    )


#: What every checkpoint :func:`save_checkpoint` has written holds (older ones too).
CHECKPOINT_FIELDS = ("epoch", "model", "optimizer", "scheduler", "rng_ranks", "per", "metrics")


def load_checkpoint(run: RunDir, s: Setup) -> tuple[int, list[dict[str, Any]]]:
    ckpt = run.load_checkpoint(map_location=s.device)
    missing = [f for f in CHECKPOINT_FIELDS if f not in ckpt] if isinstance(ckpt, dict) else None
    if missing is None or missing:
        what = f"a {type(ckpt).__name__}" if missing is None else f"a dict without {', '.join(missing)}"
        raise RunDirError(
            f"{run.checkpoint_path} is not a checkpoint of per_core.train ({what}): restore the run's own "
            "last.pt, or train the run again with --overwrite"
        )
    if "config" in ckpt and (lines := config_differences(ckpt["config"], s.cfg)):
        raise RunDirError(
            f"{run.checkpoint_path} was trained with other settings than {run.config_path.name} holds ({lines}); "
            "one of the two files was replaced: restore it, or train again with --overwrite"
        )
    s.module.load_state_dict(ckpt["model"])
    s.optimizer.load_state_dict(ckpt["optimizer"])
    s.scheduler.load_state_dict(ckpt["scheduler"])
    if isinstance(s.penalty, VCL):
        if ckpt.get("penalty") is None:
            raise ValueError(
                f"{run.root}: this vcl run was trained with a constant beta, before VCL learned its betas; it "
                "cannot continue as the paper's VCL: train it again with --overwrite"
            )
        s.penalty.load_state_dict(ckpt["penalty"])  # into the betas the optimizer holds
    ranks = ckpt["rng_ranks"]
    own = ranks[s.env.rank] if len(ranks) == s.env.world_size else {}
    # rank 0's PER and recorder states: all that checkpoints before per-rank states hold; with another number
    # of ranks, only the shared slices are kept (each rank's locations and reservoir keys restart)
    if "per" not in own:
        s.per.load_state_dict({**ckpt["per"], "location_generators": {}})
    if s.env.world_size == 1 and not own.get("per", ckpt["per"]).get("location_generators"):
        s.per.locations_seed = None  # saved before the locations had a stream of their own: they drew from the slices'
    if own and "recorder" not in own and s.recorder is not None and ckpt["recorder"] is not None:
        s.recorder.load_state_dict(ckpt["recorder"])
    if s.task.best_of_validation:
        s.best = _saved_best(ckpt)
    if own:
        _set_rng_state(s, own)
    else:  # resumed on another number of ranks: the shared data order continues, per-rank streams restart
        s.data_generator.set_state(ranks[0]["data"])
        if s.env.is_main:
            _say(f"resuming a {len(ranks)}-rank run on {s.env.world_size} ranks: per-rank RNG streams restart")
    return int(ckpt["epoch"]), list(ckpt["metrics"])


def _saved_best(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The best validation epoch of a checkpoint and its model's state: the checkpoint's own model when that epoch
    is the checkpoint's, else the one stored apart; None where unknown (a checkpoint from before best-model
    tracking holds only its own epoch's model: another best epoch's test metrics cannot be measured)."""
    if (best := ckpt.get("best")) is not None:
        state = ckpt["model"] if best["epoch"] == ckpt["epoch"] else best["model"]
        return {"epoch": best["epoch"], "val_loss": best["val_loss"], "state": state}
    row = min(ckpt["metrics"], key=_validation_rank)  # the first of equal losses, as the strict < keeps it
    state = ckpt["model"] if row["epoch"] == ckpt["epoch"] else None
    return {"epoch": row["epoch"], "val_loss": row["val_loss"], "state": state}


def _validation_rank(row: dict[str, Any]) -> tuple[bool, float]:
    """Sort key of epochs by validation loss, a non-finite loss after every finite one."""
    return not math.isfinite(row["val_loss"]), row["val_loss"]


def _state_copy(module: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``module``'s state in which tensors that share memory (tied weights) still share it."""
    copies: dict[tuple[Any, ...], torch.Tensor] = {}
    state = {}
    for k, v in module.state_dict().items():
        key = (v.data_ptr(), v.shape, v.stride(), v.dtype)
        if key not in copies:
            copies[key] = v.detach().clone()
        state[k] = copies[key]
    return state


def _track_best(s: Setup, row: dict[str, Any], final: bool) -> None:
    """Keep the model of the best validation epoch; at the final epoch add its metrics to ``row`` as ``best_*``.

    As pytorch/examples' word-LM: an epoch is the best when its validation loss is below every earlier one's, and
    the test split is measured on that epoch's model (``best_test_ppl``), next to the last model's (``test_ppl``).
    Every rank calls this (the evaluation is collective).
    """
    if s.best is None or _validation_rank(row) < _validation_rank(s.best):
        s.best = {"epoch": row["epoch"], "val_loss": row["val_loss"], "state": _state_copy(s.module)}
    if not final:
        return
    if s.best["epoch"] == row["epoch"]:
        measured = {k: v for k, v in row.items() if k.startswith(("val_", "test_"))}
    elif s.best["state"] is None:
        if s.env.is_main:
            _say(
                f"note: the best validation epoch, {s.best['epoch']}, was trained before the trainer kept its "
                "model: no best_test metrics"
            )
        row["best_epoch"] = s.best["epoch"]
        return
    else:
        last = _state_copy(s.module)
        s.module.load_state_dict(s.best["state"])
        measured = s.task.evaluate(s.module, final=True, env=s.env)
        s.module.load_state_dict(last)
    row["best_epoch"] = s.best["epoch"]
    row.update({f"best_{k}": v for k, v in measured.items()})


# Fields that may change when a run is resumed: continuing a finished run for more epochs (the
# milestones are absolute epochs, so 10 then 20 epochs is the schedule of 20), moving it to another
# device, or to another machine where the data lives elsewhere. Any other difference is refused;
# config.json's "resumed" list records each resume, its command and what it changed.
RESUMABLE_CHANGES = {"epochs", "device", "data_dir"}


def _changes(saved: dict[str, Any], cfg: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """Fields of ``cfg`` that differ from a saved config.json, as ``{name: (saved, now)}``.

    Fields added to :class:`TrainConfig` after the run was saved compare as their defaults.
    """
    before = TrainConfig.from_dict(saved).to_dict()
    return {k: (before.get(k), v) for k, v in cfg.to_dict().items() if before.get(k) != v}


def config_differences(saved: dict[str, Any], cfg: TrainConfig, ignore: Set[str] = frozenset()) -> str:
    """What differs between a saved config.json and ``cfg`` beyond :data:`RESUMABLE_CHANGES` and ``ignore``,
    as ``"name: saved X vs now Y, ..."``; an empty string when the two describe the same run."""
    diff = {k: d for k, d in _changes(saved, cfg).items() if k not in RESUMABLE_CHANGES | ignore}

    def shown(key: str, value: Any) -> str:  # as the flag takes it: --per-locations all
        return "'all'" if key == "per_locations" and value is None else repr(value)

    return ", ".join(f"{k}: saved {shown(k, a)} vs now {shown(k, b)}" for k, (a, b) in sorted(diff.items()))


def read_trained_config(run: RunDir) -> dict[str, Any]:
    """``run``'s config.json, checked to be one that :func:`train` wrote (it holds :data:`TRAINER_FIELDS`).

    A config.json written by hand (the README's quick start) labels a run for the analysis, but a resume
    would fill its missing settings with the demo preset's and train that over the user's files.
    """
    saved = run.read_config()
    if missing := [f for f in TRAINER_FIELDS if f not in saved]:
        raise RunDirError(
            f"{run.config_path} was not written by per_core.train (it has no {', '.join(missing)}): only the "
            "trainer's runs can be resumed, swept or tabled; train into another --out"
        )
    return saved


def prepare_run_dir(run: RunDir, cfg: TrainConfig, resume: bool, overwrite: bool) -> bool:
    """Refuse to mix runs: a non-empty directory needs --resume (same config) or --overwrite.

    Returns whether the directory must be emptied before training (``--overwrite`` of an earlier run).
    Nothing is deleted here: :func:`train` empties it only once the model, data and recorder are built,
    so a mistyped flag or missing data never costs the old run. A folder holding anything a run does
    not write (:meth:`RunDir.foreign_entries`) is never deleted.
    """
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    if run.root.exists() and not run.root.is_dir():
        raise RunDirError(f"--out {run.root} is a file, not a folder: choose a folder for the run")
    occupied = run.root.exists() and any(run.root.iterdir())
    if resume:
        run.remove_stale_temporaries()
        if lines := config_differences(read_trained_config(run), cfg):
            raise RunDirError(
                f"{run.config_path}: cannot resume with a different config ({lines}); leave those flags out to "
                "continue the run as it was, or train into another --out (or --overwrite it) to start anew"
            )
    elif (outer := enclosing_run(run.root)) is not None:
        raise RunDirError(
            f"--out {run.root} is inside the run directory {outer}: the readers (tables, plots) stop at that run "
            "and would never see this one; choose a folder outside it"
        )
    elif occupied and not overwrite:
        raise RunDirError(f"{run.root} is not empty; pass --resume to continue that run or --overwrite to replace it")
    elif occupied and (foreign := run.foreign_entries()):
        names = ", ".join(p.name for p in foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        if any(holds_runs(p) for p in foreign):  # a sweep (or a folder of runs), not a run
            raise RunDirError(
                f"{run.root} holds run directories ({names}), as a sweep does; --overwrite replaces one run "
                "directory: choose another --out, or one of those runs"
            )
        raise RunDirError(
            f"{run.root} holds files that no run writes ({names}); --overwrite replaces only run "
            "directories: choose another --out or move those files away"
        )
    return occupied and not resume


def _trained_parameters(s: Setup) -> list[nn.Parameter]:
    """The model's parameters in model order (the order the global norm is summed in), then VCL's betas."""
    return [*s.module.parameters(), *(s.penalty.parameters() if isinstance(s.penalty, VCL) else [])]


def clip_gradients(s: Setup, params: list[nn.Parameter]) -> None:
    """Scale the gradients so that their norm, or each tensor's (``clip_per_tensor``), is at most ``grad_clip``."""
    assert s.cfg.grad_clip is not None
    for part in [[p] for p in params] if s.cfg.clip_per_tensor else [params]:
        nn.utils.clip_grad_norm_(part, s.cfg.grad_clip)


def _average_across_ranks(s: Setup, params: list[nn.Parameter]) -> None:
    """Replace the gradients of ``params`` by their mean over the ranks (one collective)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    mean = s.env.all_reduce_sum(torch.cat([g.flatten() for g in grads])) / s.env.world_size
    for p, part in zip(params, mean.split([g.numel() for g in grads]), strict=True):
        p.grad = part.view_as(p).clone()


def train_epoch(s: Setup, epoch: int, progress: bool) -> dict[str, float]:
    """One pass over the training data: mean loss, error (%), ``per_penalty`` and, for vcl/l1/l2, ``penalty_loss``.

    ``train_loss`` is the task's loss alone, averaged over the epoch's steps as the model changes (in
    training mode). ``penalty_loss`` is the loss term a vcl/l1/l2 penalty added (lam x penalty), averaged
    the same way; their sum is what was minimized. ``per_penalty`` is L_per (without lambda) averaged
    over the regularized layers and over the steps where it was measured (every ``log_every`` steps),
    for every method (a lam=0 monitor for non-PER runs). PER adds lam x its gradient inside backward,
    so gradient clipping (``grad_clip``) bounds the sum of the task's and PER's gradients.
    Reference values: sqrt(2/pi) = 0.798 (its floor, a point mass at 0), 2/sqrt(pi) = 1.128 at N(0, I).
    """
    cfg, model = s.cfg, s.model
    model.train()
    loss_sum = torch.zeros((), device=s.device, dtype=torch.float64)
    wrong = torch.zeros((), device=s.device, dtype=torch.int64)
    count, penalties = 0, []
    penalty_sum = torch.zeros((), device=s.device, dtype=torch.float64)  # vcl/l1/l2: their loss term, per sample
    batches = s.task.train_batches(s.data_generator, s.aug_generator, s.env.rank, s.env.world_size)
    total = min(SMOKE_STEPS, s.task.steps_per_epoch(1)) if cfg.smoke else s.task.steps_per_epoch(1)
    desc = f"{cfg.method} epoch {epoch}/{cfg.epochs}"
    # a bar in a terminal or a notebook, not in a log file (there the epoch lines say it)
    shown = bar_shown(progress and s.env.is_main)
    bar = tqdm(batches, desc=desc, total=total, leave=False, disable=not shown, dynamic_ncols=True)
    done, checked, last_batch = -1, -1, None  # last step run, last step whose loss was checked, its batch
    for step, batch in enumerate(bar):
        if cfg.smoke and step >= SMOKE_STEPS:
            break
        track = step % cfg.log_every == 0
        s.per.track_penalty = track
        s.optimizer.zero_grad(set_to_none=True)
        out = s.task.step(model, batch)
        loss = out.loss
        if s.penalty is not None:  # vcl, l1, l2: lam x the penalty, added to the task loss
            term = s.penalty.loss()
            penalty_sum += term.detach().double() * out.count
            loss = loss + term
        loss.backward()
        if s.env.distributed and isinstance(s.penalty, VCL):
            _average_across_ranks(s, list(s.penalty.parameters()))  # DDP averages only the model's gradients
        if cfg.grad_clip is not None:
            clip_gradients(s, _trained_parameters(s))
        s.optimizer.step()
        loss_sum += out.loss.detach().double() * out.count
        wrong += out.errors
        count += out.count
        done, last_batch = step, batch
        if track:  # the only host syncs (and, under DDP, the only extra collective): one every log_every steps
            pen_local = torch.tensor([s.per.penalty() / len(s.per.modules)], dtype=torch.float64, device=s.device)
            local = [loss_sum[None], pen_local, loss_sum.new_tensor([count]), wrong.double()[None]]
            totals = s.env.all_reduce_sum(torch.cat(local))
            mean_loss = float(totals[0]) / float(totals[2])
            pen = float(totals[1]) / s.env.world_size
            if not (math.isfinite(mean_loss) and math.isfinite(pen)):
                what = "training loss" if not math.isfinite(mean_loss) else "PER penalty"
                pens = s.per.penalty(per_layer=True)
                layers = [k for k in s.per.modules if k in pens and not math.isfinite(pens[k])]  # in model order
                raise TrainingError(
                    _divergence(s, epoch, f"non-finite {what} at epoch {epoch}, step {step}", layers, batch)
                )
            checked = step
            penalties.append(pen)
            running = s.task.summarize(float(totals[0]), int(totals[3]), int(totals[2]))
            bar.set_postfix({k.removeprefix("train_"): f"{v:.4g}" for k, v in running.items()})
    s.per.track_penalty = False
    if count == 0:
        raise TrainingError("the training split yielded no batch; check --batch-size against the data size")
    totals = s.env.all_reduce_sum(torch.stack([loss_sum, wrong.double(), loss_sum.new_tensor(count), penalty_sum]))
    if not math.isfinite(float(totals[0])):  # between the last checked step and the end of the epoch
        where = (
            f"non-finite training loss at epoch {epoch}, after step {checked} (the last step checked; the loss is "
            f"checked every {cfg.log_every} steps and at the end of the epoch, after step {done})"
        )
        raise TrainingError(_divergence(s, epoch, where, [], last_batch))
    row = {
        **s.task.summarize(float(totals[0]), int(totals[1]), int(totals[2])),
        "per_penalty": float(np.mean(penalties)) if penalties else float("nan"),
    }
    if s.penalty is not None:  # the loss term the penalty added (train_loss is the task's alone)
        row["penalty_loss"] = float(totals[3]) / float(totals[2])
    return row


def _non_finite_layers(s: Setup, batch: Any) -> list[str]:
    """The regularized layers whose output on ``batch`` is non-finite now, in forward order (one eval forward pass)."""
    bad: list[str] = []

    def hook(name: str):
        def check(module: nn.Module, args: tuple, out: Any) -> None:
            h = out[0] if isinstance(out, tuple) else out
            h = getattr(h, "data", h) if not isinstance(h, torch.Tensor) else h  # PackedSequence -> its rows
            if isinstance(h, torch.Tensor) and h.is_floating_point() and not bool(torch.isfinite(h).all()):
                bad.append(name)

        return check

    handles = [m.register_forward_hook(hook(name)) for name, m in s.per.modules.items()]
    try:  # eval mode: no batch statistics and no collective (the run stops; the model is not used again)
        s.module.eval()
        with torch.no_grad():
            s.task.forward(s.module, batch[0] if isinstance(batch, tuple) else batch)
    except Exception:  # a diagnosis must never replace the error it explains
        pass
    finally:
        for handle in handles:
            handle.remove()
    return bad


def _divergence(s: Setup, epoch: int, where: str, layers: list[str], batch: Any) -> str:
    """The message of a divergence: where, which layers (from PER's penalty, else one forward pass), what to do."""
    detail = ""
    if layers:  # L_per is tracked for the log whatever the method: non-finite where the activations are
        detail = f" (layers {', '.join(layers)}: non-finite activations, their tracked L_per not finite)"
    elif batch is not None and (found := _non_finite_layers(s, batch)):
        detail = f" (layers {', '.join(found)}: non-finite activations on the last batch, in forward order)"
    kept = f"the checkpoint of epoch {epoch - 1} is intact" if epoch > 1 else "no checkpoint was written"
    lower = "the learning rate or lambda" if s.cfg.method in LAM_METHODS else "the learning rate"
    return f"{where}{detail}; {kept}; lower {lower}, or clip gradients (--grad-clip)"


def _should_record(cfg: TrainConfig, epoch: int) -> bool:
    return cfg.record is not None and (epoch % cfg.record_every == 0 or epoch == cfg.epochs)


def train(
    cfg: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train ``cfg`` into the run directory ``out``; returns the metrics of every epoch.

    The config is checked before the directory is looked at. Rank 0 prints one line per epoch (on
    stdout); ``progress`` adds a progress bar within the epoch when stderr is a terminal.
    """
    return _train_in_group(cfg, out, resume, overwrite, progress, teardown=True)


def _train_in_group(
    cfg: TrainConfig, out: str | Path, resume: bool, overwrite: bool, progress: bool, teardown: bool
) -> list[dict[str, Any]]:
    """:func:`train`; ``teardown=False`` leaves the process group up for a process that ends right after
    (:func:`per_core.distributed.exit_without_teardown`)."""
    validate_config(cfg)
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    run = RunDir(out)
    env = init_from_env(cfg.device)
    try:
        _check_ranks_agree(env, cfg, out, resume, overwrite)
        clear, failed = False, None
        if env.is_main:
            try:
                clear = prepare_run_dir(run, cfg, resume, overwrite)
            except Exception as err:
                if not env.distributed:
                    raise
                failed = err
        # every rank learns whether rank 0 may go on (else they would wait for it until gloo's timeout)
        if env.distributed and any(env.all_gather_object(failed is not None)):
            if failed is not None:
                raise failed
            raise PeerStopped("rank 0 stopped before training: its error says why")
        setup = build(cfg, env)  # data, model and recorder first: an error here leaves the old run as it was
        if clear:
            shutil.rmtree(run.root)
        env.barrier()  # no rank starts before the old run is gone
        metrics = _train(run, setup, resume, progress)
        env.barrier()  # no rank tears the process group down while another still uses it (gloo aborts)
        return metrics
    finally:
        if teardown:
            shutdown()


class PeerStopped(RuntimeError):
    """Another rank failed first and said why; this rank stops without a message of its own."""


def _check_ranks_agree(env: DistEnv, cfg: TrainConfig, out: str | Path, resume: bool, overwrite: bool) -> None:
    """Under data parallelism, refuse ranks launched with different settings (torchrun passes every rank the same
    arguments; another launcher might not): a different seed would shuffle another permutation on each rank
    and draw other slices, silently; a different batch size would abort inside gloo."""
    if not env.distributed:
        return
    settings = {**cfg.to_dict(), "--out": str(Path(out).resolve()), "--resume": resume, "--overwrite": overwrite}
    mine = {k: _as_text(v) for k, v in settings.items()}
    ranks = env.all_gather_object(mine)
    differ = sorted({k for other in ranks if isinstance(other, dict) for k in mine if other.get(k) != mine[k]})
    if differ:
        raise ValueError(
            f"the {env.world_size} ranks were started with different settings ({', '.join(differ)}); "
            "start every rank with the same arguments (torchrun does)"
        )


def _as_text(value: object) -> str:
    """A setting as text that equal settings share: a NaN is not equal to itself and an array's == is not a bool,
    so settings are compared this way (arrays and tensors in full, mappings in key order where it exists)."""

    def other(o: object) -> object:
        return o.tolist() if hasattr(o, "tolist") else repr(o)  # numpy and torch values as the numbers they hold

    try:
        return json.dumps(value, sort_keys=True, default=other)
    except TypeError:  # keys that do not sort (int and str)
        return json.dumps(value, default=other)


def _shown(key: str, value: float) -> str:
    """A metric as the log lines print it: error rates are percentages (``val_error 12.5%``)."""
    return f"{key} {value:.4g}" + ("%" if key.endswith("_error") else "")


def _say(line: str) -> None:
    """One line on stdout, around a progress bar if one is shown, flushed; a closed stdout does not stop training."""
    say(line, tqdm.write)


def _config_record(saved: dict[str, Any] | None, cfg: TrainConfig, start: int) -> dict[str, Any]:
    """What config.json holds: the config, and the command, package versions, CPU threads and malloc setting
    (:func:`per_core.allocator.malloc_setting`) of the first launch.

    A resume keeps those (the threads of the launch that trains from epoch 1) and appends
    ``{"from_epoch", "command", "versions", "threads", "malloc", "changed"}`` to the list ``"resumed"``;
    ``changed`` maps each field that differs from the saved config (only :data:`RESUMABLE_CHANGES`)
    to ``[saved, now]``. ``saved``: the resumed run's config.json, None for a new run.
    """
    now = {
        "command": sys.argv,
        "versions": package_versions(),
        "threads": torch.get_num_threads(),
        "malloc": malloc_setting(),
    }
    if saved is None:
        return {**cfg.to_dict(), **now}
    entry = {"from_epoch": start, **now, "changed": _changes(saved, cfg)}  # (saved, now) pairs, lists in JSON
    first = {k: saved[k] for k in now if k in saved}  # a run saved before "threads" existed does not know its own
    if start == 0:  # no checkpoint: the run starts over, with this launch's threads
        first["threads"] = now["threads"]
    return {**cfg.to_dict(), **first, "resumed": [*saved.get("resumed", []), entry]}


def finished_epochs(run: RunDir) -> str:
    """What says that ``run`` finished epochs (its metrics.jsonl rows, its activation files), or ''.

    The activation file of epoch 1 alone does not: it is written before the epoch's checkpoint, so a kill
    between the two leaves it behind, and the resume writes it again.
    """
    rows = len(run.read_metrics(on_bad=lambda err: None))
    files = sum(epoch > 1 for epoch in run.activation_epochs())
    found = [f"{rows} in {run.metrics_path.name}"] if rows else []
    return ", ".join(found + ([f"{files} activation file(s)"] if files else []))


def _train(run: RunDir, s: Setup, resume: bool, progress: bool) -> list[dict[str, Any]]:
    cfg, main = s.cfg, s.env.is_main
    start, metrics = 0, []
    saved = run.read_config() if resume and main else None  # read once: the thread note and the new record
    try:
        if resume and run.checkpoint_path.is_file():
            start, metrics = load_checkpoint(run, s)
            if main:  # a kill between checkpoint and metrics write leaves metrics.jsonl one epoch behind
                run.write_metrics(metrics)
            if start >= cfg.epochs:  # the saved config keeps its epochs: nothing of the run changes
                if main:
                    _say(f"{run.root} already has {start} epochs >= --epochs {cfg.epochs}; nothing to train")
                return metrics
            if main:
                _say(f"resuming {run.root} at epoch {start + 1}/{cfg.epochs}")
                threads, first = torch.get_num_threads(), saved.get("threads")
                if s.device.type == "cpu" and first not in (None, threads):
                    _say(
                        f"note: this run started with {first} CPU threads and goes on with {threads}: float sums "
                        f"run in another order, so it will differ slightly from an uninterrupted run "
                        f"(OMP_NUM_THREADS={first} would match it)"
                    )
        elif resume:  # killed before its first epoch finished: nothing to continue from
            if finished := finished_epochs(run):  # unless the checkpoint is gone: starting over would replace them
                raise RunDirError(
                    f"{run.checkpoint_path} is missing, but {run.root} holds finished epochs ({finished}): "
                    "--resume would train from epoch 1 over them; restore the checkpoint, or train the run again "
                    "with --overwrite"
                )
            if main:
                _say(f"{run.root}: no checkpoint yet, starting from epoch 1")
        if main:
            run.write_config(_config_record(saved, cfg, start))
        for epoch in range(start + 1, cfg.epochs + 1):
            t0 = time.perf_counter()
            recording = s.recorder is not None and _should_record(cfg, epoch)
            if recording:
                s.recorder.start_epoch(epoch, reservoir=True if epoch == cfg.epochs else None)
            row: dict[str, Any] = {"epoch": epoch, "lr": s.optimizer.param_groups[0]["lr"]}
            row.update(train_epoch(s, epoch, progress))
            if recording:
                s.recorder.end_epoch()
                s.recorder.reduce_across_ranks()  # every rank's train statistics into rank 0's
            s.env.broadcast_buffers(s.module)  # rank 0's norm statistics everywhere: one model, as checkpointed
            s.module.eval()
            row.update(s.task.evaluate(s.module, final=epoch == cfg.epochs, env=s.env))  # each rank a share
            if s.task.best_of_validation:
                _track_best(s, row, final=epoch == cfg.epochs)
            if isinstance(s.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                s.scheduler.step(row["val_loss"])
            else:
                s.scheduler.step()
            if recording and main:
                with s.recorder.eval_pass(), torch.no_grad():
                    s.task.forward(s.module, s.task.record_batch())
                s.recorder.save(run.root, epoch)
            row["seconds"] = time.perf_counter() - t0
            metrics.append(row)
            save_checkpoint(run, s, epoch, metrics)  # the commit point of an epoch
            if main:  # after the checkpoint: metrics.jsonl never lists an epoch that a resume would redo
                run.write_metrics(metrics)
            s.env.barrier()
            if main:  # with or without a bar: a batch job's log has one line per epoch
                shown = ", ".join(_shown(k, v) for k, v in row.items() if k not in ("epoch", "lr"))
                _say(f"[{cfg.method}] epoch {epoch}/{cfg.epochs}: {shown}")
    finally:  # hooks never outlive the run, also when it fails
        s.per.remove()
        if s.penalty is not None:
            s.penalty.remove()
        if s.recorder is not None:
            s.recorder.remove()
    return metrics


# --- command line -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(  # usage errors: one line, exit 2
        prog="python -m per_core.train",
        description="Train a model with PER or a baseline into a run directory.",
    )
    p.add_argument("--preset", choices=sorted(PRESETS), help="starting configuration (default demo)")
    p.add_argument(
        "--method",
        choices=METHODS,
        help="vanilla; bn / dbn (decorrelated BN) / rbn (recurrent BN, LSTMs); per; vcl / l1 / l2 (loss penalties)",
    )
    p.add_argument("--out", type=nonempty_folder, help="run directory to write (default: runs/PRESET-METHOD-seedS)")
    p.add_argument("--epochs", type=int, help="number of epochs")
    p.add_argument("--seed", type=int, help="the run's seed: each random stream (init, data, PER, ...) derives its own")
    p.add_argument(
        "--lam",
        type=float,
        help="strength of per, vcl, l1 or l2 (default: the preset's for per; vcl 0.01, l1 0.1, l2 2)",
    )
    p.add_argument("--n-slices", type=int, help="PER slices per step (paper: 256)")
    p.add_argument("--per-locations", help="conv layers: spatial locations per image used by PER, or 'all' (default 4)")
    p.add_argument("--lr", type=float, help="initial learning rate")
    p.add_argument("--batch-size", type=int, help="training batch size")
    p.add_argument(
        "--grad-clip", type=float, help="clip the gradient norm to this value (each tensor's on Table 2 presets)"
    )
    p.add_argument("--data-dir", type=nonempty_path, help="folder with the real data files")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--record", help="layers to record: all, none, or comma-separated labels (layer3,layer6)")
    p.add_argument("--record-every", type=int, help="record activations every k epochs")
    p.add_argument("--record-train-every", type=int, help="record one in k training batches (default 50; 1: all)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace the run directory in --out (never other files)")
    p.add_argument("--smoke", action="store_true", help="a few steps on synthetic data of the right shape")
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bar (a line per epoch is printed either way)"
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The preset (or, with --resume, the run's saved config) with the flags given on the command line.

    The flags' values are checked first, so that a wrong flag is reported before the run directory is read.
    """
    changes = {
        k: getattr(args, k)
        for k in (
            "method",
            "epochs",
            "seed",
            "lam",
            "n_slices",
            "lr",
            "batch_size",
            "grad_clip",
            "data_dir",
            "device",
            "record_every",
            "record_train_every",
        )
        if getattr(args, k) is not None
    }
    if args.record is not None:
        if not any(label.strip() for label in args.record.split(",")):
            raise ValueError(f"--record needs all, none, or comma-separated layer labels, got {args.record!r}")
        changes["record"] = None if args.record == "none" else args.record
    if args.per_locations is not None:
        changes["per_locations"] = parse_per_locations(args.per_locations)
    preset = args.preset or "demo"
    if args.resume:
        get_preset(preset).replace(**changes).validate()  # the flags' ranges, before reading the run
    # resumed: the saved config (--smoke on a saved real run differs from it, and the resume check refuses it)
    cfg = TrainConfig.from_dict(read_trained_config(RunDir(args.out))) if args.resume else get_preset(preset)
    if args.resume and args.preset not in (None, cfg.preset):
        raise ValueError(
            f"--preset {args.preset}: the run in {args.out} continues with its own settings (preset {cfg.preset}); "
            "leave --preset out to resume it, or train the other preset into another --out"
        )
    cfg = (cfg.as_smoke() if args.smoke else cfg).replace(**changes)
    if args.resume or args.lam is not None:
        return cfg
    return cfg.for_method(cfg.method)  # a loss penalty's own default strength


def flag_notes(
    cfg: TrainConfig,
    methods: Sequence[str],
    *,
    lam_flag: str | None = None,
    per_locations: bool = False,
    data_dir: bool = False,
    method_flag: str = "--method",
) -> list[str]:
    """Notes on flags that were given but that none of ``methods`` on ``cfg.model`` uses.

    ``lam_flag``: the name of the lambda flag when it was given (``--lam``, the sweep's ``--lams``);
    ``per_locations``, ``data_dir``: whether ``--per-locations``, ``--data-dir`` were given.
    """
    notes, with_methods = [], f"with {method_flag} {','.join(methods)}"
    if lam_flag and not any(m in LAM_METHODS for m in methods):
        notes.append(f"note: {lam_flag} has no effect {with_methods} (it is for {', '.join(LAM_METHODS)})")
    if per_locations and "per" not in methods:
        notes.append(f"note: --per-locations has no effect {with_methods} (it is for per)")
    elif per_locations and cfg.model in MODELS and is_recurrent(cfg.model):
        notes.append(
            f"note: --per-locations has no effect on preset {cfg.preset} ({cfg.model}): "
            "it picks spatial locations of conv layers, and an LSTM's rows are time steps"
        )
    if data_dir and not reads_data_dir(cfg):
        why = "--smoke trains on synthetic data" if cfg.smoke else f"its data ({cfg.data}) are embedded"
        notes.append(f"note: --data-dir has no effect on preset {cfg.preset}: {why}")
    return notes


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rank = int(os.environ.get("RANK", "0"))
    except ValueError:  # reported by init_from_env, as an error line
        rank = 0

    def body() -> int:
        tune_malloc()  # before the first tensors: see per_core.allocator
        if args.resume and args.overwrite:
            raise ValueError(
                "--resume and --overwrite exclude each other: --resume continues the run, --overwrite replaces it"
            )
        if args.out is None and args.resume:
            raise ValueError("--resume needs --out RUN_DIR (the run to continue)")
        cfg = config_from_args(args)
        validate_config(cfg)
        if rank == 0:
            lam_flag = "--lam" if args.lam is not None else None
            given = {"per_locations": args.per_locations is not None, "data_dir": args.data_dir is not None}
            for line in flag_notes(cfg, [cfg.method], lam_flag=lam_flag, **given):
                note(line)
        if args.out is None:
            args.out = Path("runs") / f"{cfg.preset}-{cfg.method}-seed{cfg.seed}{'-smoke' if cfg.smoke else ''}"
        # the process group stays up until the process ends (below): gloo's is then left without a teardown
        try:
            metrics = _train_in_group(cfg, args.out, args.resume, args.overwrite, not args.no_progress, teardown=False)
        except PeerStopped:  # rank 0 printed the error
            return 2
        if rank == 0:  # rank 0 reports
            last = metrics[-1] if metrics else {}
            shown = ", ".join(_shown(k, last[k]) for k in ("val_error", "val_ppl", "val_loss") if k in last)
            say(f"done: {args.out} (epoch {last.get('epoch')}, {shown})")
        return 0

    try:
        code = run_command(
            body,
            debug=args.debug,
            errors=(ValueError, OSError, TrainingError),
            who="" if rank == 0 else f"rank {rank}: ",  # every rank that fails says so, the others marked
            interrupted=lambda: _interrupted(args.out),
        )
    except BaseException:  # --debug re-raises: the group is torn down as train() would
        shutdown()
        raise
    if gloo_ranks():
        exit_without_teardown(code)
    shutdown()
    return code


def _interrupted(out: Path | None) -> str:
    """What a Ctrl-C leaves: the finished epochs that ``--resume`` continues from, or none."""
    run = RunDir(out) if out is not None else None
    try:
        done = len(run.read_metrics()) if run is not None and run.is_run() else 0
    except RunDirError:
        done = 0
    if done:
        return f"interrupted; {done} finished epoch(s) are saved in {out} (continue with --resume)"
    where = f" in {out}" if out is not None else ""
    return f"interrupted before an epoch finished: nothing was saved{where} to continue from"


if __name__ == "__main__":
    sys.exit(main())
