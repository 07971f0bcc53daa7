"""Sweeps: methods x lambdas x seeds of one preset into a sweep directory, and the results table.

    python -m per_core.sweep --preset demo --methods vanilla,bn,per --seeds 0,1,2 --out runs/sweep-demo
    python -m per_core.sweep --preset demo --methods per --lams grid --seeds 0,1,2 --out runs/lam-demo
    python -m per_core.sweep --table runs/sweep-demo        # only print the table of an existing sweep

Layout: ``OUT/<method>/seed<S>/`` for methods without lambda and ``OUT/<method>-lam<L>/seed<S>/`` for
the regularizers (per, vcl, l1, l2). A finished run is skipped and an unfinished one resumed, so an
interrupted sweep continues where it stopped. The table reports, per task and method (and lambda),
the validation metric as mean +- sample std over seeds, with the number of seeds, and marks the lambda
with the best mean, the way the paper's tables report the best of its grid (:func:`best_lambdas`: the
lowest mean as shown; on a tie, the smallest lambda). Image nets count their last epoch; language
models their best validation epoch, validation and test of its model (as PyTorch's word-LM example).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from per_core.allocator import tune_malloc
from per_core.cli import (
    OneLineArgumentParser,
    nonempty_folder,
    nonempty_path,
    note,
    parse_per_locations,
    run_command,
    say,
)
from per_core.configs import METHODS, PAPER_RESULTS, PRESETS, TrainConfig, get_preset, lambda_grid
from per_core.models import MODELS
from per_core.rundir import FAILED, RunDir, RunDirError, atomic_write, check_not_a_run, find_runs, numbers_only
from per_core.train import (
    LAM_METHODS,
    TrainingError,
    config_differences,
    finished_epochs,
    flag_notes,
    is_recurrent,
    read_trained_config,
    train,
    validate_config,
)

__all__ = ["best_lambdas", "main", "results_table", "run_sweep"]

REGULARIZERS = LAM_METHODS  # the methods with a lambda: per, l1, l2, vcl


def _lam_text(lam: float) -> str:
    """``lam`` as folders and tables name it: short (``1e-05``, ``0.001``) yet never two lambdas alike."""
    short = f"{lam:g}"
    return short if float(short) == lam else repr(float(lam))


def _run_name(method: str, lam: float | None) -> str:
    return method if lam is None else f"{method}-lam{_lam_text(lam)}"


#: Settings that change what a run records or logs, never its training: a finished run of other values of
#: these still answers the sweep (one it resumes must match them all). log_every: when L_per is logged.
_RECORDING = {
    "record",
    "record_every",
    "record_eval_samples",
    "record_train_every",
    "record_reservoir_every",
    "log_every",
}


def _other_settings(saved: dict[str, Any], cfg: TrainConfig, resumes: bool) -> str:
    """How a run's saved config differs from ``cfg`` in what the sweep reports (empty: the same run).

    A run the sweep will not train again (finished, or failed) is compared without :data:`_RECORDING`,
    and for methods other than per without PER's settings (there PER only monitors L_per, at lambda 0);
    a run it ``resumes`` or extends must match as ``--resume`` requires.
    """
    if resumes:
        return config_differences(saved, cfg)
    return config_differences(saved, cfg, ignore=_unreported(cfg.method))


def _unreported(method: str) -> set[str]:
    """Settings that do not change what a run of ``method`` reports: recording, and PER's settings for the
    other methods (there PER only monitors L_per, at lambda 0)."""
    return _RECORDING | (set() if method == "per" else {"per_locations", "n_slices"})


def run_sweep(
    base: TrainConfig,
    out: Path,
    methods: Sequence[str],
    seeds: Sequence[int],
    lams: Sequence[float] | Mapping[str, Sequence[float]] | None = None,
    progress: bool = True,
) -> list[Path]:
    """Train every (method, lambda, seed) into ``out``; returns the run directories.

    ``lams``: the lambdas of every regularizer (per, vcl, l1, l2), or a grid per method; None trains
    each at its default strength (:meth:`TrainConfig.for_method`).
    """
    plan, seen, twice = [], set(), {}
    for method in methods:
        grid = lams.get(method) if isinstance(lams, Mapping) else lams
        for lam in grid if (grid and method in REGULARIZERS) else [None]:
            for seed in seeds:
                cfg = base.for_method(method).replace(seed=seed, **({} if lam is None else {"lam": lam}))
                validate_config(cfg)  # every run's settings (a seed out of range) before the first one trains
                path = out / _run_name(method, lam) / f"seed{seed}"
                if path in seen:  # a method, lambda (0.01 and 1e-2) or seed given twice: one run
                    twice.setdefault(path.relative_to(out).as_posix())
                    continue
                seen.add(path)
                run, failed = RunDir(path), (path / FAILED).is_file()
                saved = read_trained_config(run) if run.is_run() else None
                done = numbers_only(run.read_metrics())[0] if saved is not None else []  # as the table counts
                resumes = not failed and len(done) < cfg.epochs
                if saved is not None and (lines := _other_settings(saved, cfg, resumes)):
                    raise RunDirError(  # before anything trains: a sweep either runs whole or not at all
                        f"{path} holds a run of another config ({lines}); choose another --out, or delete {path} "
                        "to train it again"
                    )
                checkpoint = saved is not None and run.checkpoint_path.is_file()  # a resume restores metrics from it
                if saved is not None and resumes and not checkpoint and (finished := finished_epochs(run)):
                    raise RunDirError(  # train(resume=True) would refuse it; without resume, train over it
                        f"{path} holds finished epochs ({finished}) but its checkpoint {run.checkpoint_path.name} is "
                        f"missing, so the sweep cannot continue it; restore the checkpoint, or delete {path} to "
                        "train it again"
                    )
                own_epochs = cfg.epochs if saved is None else saved["epochs"]
                plan.append((cfg, path, done, failed, own_epochs, bool(done) or checkpoint))
    if twice:
        note(f"note: asked for more than once, taken once: {', '.join(twice)}")
    runs = []
    for cfg, path, done, failed, own_epochs, resume in plan:
        if failed:
            say(f"== {path}: failed earlier, skipped (delete {path / FAILED} to retry)")
        elif cfg.epochs <= len(done) < own_epochs:  # extended beyond --epochs, then stopped
            say(
                f"== {path}: unfinished, skipped: it was extended to {own_epochs} epochs and stopped after "
                f"{len(done)}; the table leaves it out until it finishes (per_core.train --out {path} --resume)"
            )
        elif len(done) > cfg.epochs:
            say(f"== {path}: finished, skipped (it trained {len(done)} epochs, more than --epochs {cfg.epochs})")
        elif len(done) == cfg.epochs:
            say(f"== {path}: finished, skipped")
        else:
            say(f"== {path}: {'resuming' if resume else 'training'}")
            try:
                train(cfg, path, resume=resume, overwrite=not resume, progress=progress)
            except TrainingError as err:  # e.g. divergence: report it in the table, go on with the rest
                say(f"== {path}: FAILED: {err}")
                atomic_write(path / FAILED, lambda f, e=err: f.write(f"{e}\n".encode()))
        runs.append(path)
    return runs


#: Final-epoch metrics a table reports, in order of preference; the first present is the one
#: lambdas are chosen by (lower is better for all of them).
_METRICS = ("val_error", "val_ppl", "val_loss")


def _final_metrics(rows: list[dict]) -> dict[str, float]:
    """The validation metric of the run, and its test counterpart when one was measured.

    Those of the best validation epoch's model where the trainer measured them (``best_val_ppl``,
    ``best_test_ppl``: language models, as pytorch/examples reports them), else the last epoch's.
    """
    last = rows[-1]
    for key in _METRICS:
        if key in last:
            test = "test_" + key.removeprefix("val_")
            prefix = "best_" if f"best_{key}" in last and f"best_{test}" in last else ""
            found = {key: float(last[prefix + key]), "best": bool(prefix)}
            return found | ({test: float(last[prefix + test])} if prefix + test in last else {})
    raise RunDirError("metrics.jsonl has no validation metric")


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = float(np.mean(values)) if values else math.nan
    return mean, (float(np.std(values, ddof=1)) if len(values) > 1 else math.nan)


def _pm(mean: float, std: float, unit: str = "") -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.2f}{unit} +- " + ("n/a" if math.isnan(std) else f"{std:.2f}")


def _label(metric: str) -> str:
    """A metric as the tables name it: ``val_error`` -> ``val error %``, ``test_ppl`` -> ``test ppl``."""
    return metric.replace("_", " ") + (" %" if metric.endswith("_error") else "")


#: How the tables choose the best lambda, stated under them.
BEST_RULE = "lowest mean as shown; on a tie the smallest lambda, the least regularization"


#: What a run measures (:func:`_task`): its metric's kind, data, model, model arguments (JSON), smoke or not.
Task = tuple[str, str, str, str, bool]


def _task(cfg: Mapping[str, Any]) -> Task:
    """What a run measures: its metric's kind, data, model and model arguments, and whether it is a smoke run.

    Runs of different tasks never share a row (e.g. CIFAR-10 and CIFAR-100 at one lambda, or ResNet-56
    and ResNet-110): their numbers are not samples of one quantity.
    """
    kind = "val_ppl" if cfg["model"] in MODELS and is_recurrent(cfg["model"]) else "val_error"
    args = json.dumps(cfg.get("model_args") or {}, sort_keys=True)
    return kind, str(cfg.get("data")), str(cfg["model"]), args, bool(cfg.get("smoke"))


def _task_title(task: Task) -> str:
    """A task as the tables head it, e.g. ``cnn11(activation=elu) on cifar100`` or ``resnet56 on cifar10``."""
    _, data, model, args, smoke = task
    shown = ", ".join(f"{k}={v}" for k, v in json.loads(args).items())
    return f"{model}({shown}) on {data}".replace("() ", " ") + (" (--smoke: synthetic data)" if smoke else "")


def best_lambdas(entries: list[dict]) -> dict[str, dict]:
    """Per method, the entry with the best (lowest) mean, the one every table marks and reports.

    Means are compared as the tables show them (2 decimals), so that a tie is what a reader sees as
    one (e.g. 100 % error everywhere in a smoke run); on a tie the smallest lambda wins, the least
    regularization. Entries without a finished seed take no part.
    """

    def rank(e: dict) -> tuple[float, float]:
        return float(f"{e['mean']:.2f}"), -math.inf if e["lam"] is None else e["lam"]

    best: dict[str, dict] = {}
    for e in entries:
        if e["n"] and not math.isnan(e["mean"]) and (e["method"] not in best or rank(e) < rank(best[e["method"]])):
            best[e["method"]] = e
    return best


def results_table(sweep: str | Path) -> tuple[str, list[dict]]:
    """The tables of a sweep directory: every (method, lambda), then the paper's layout.

    First table: one row per (method, lambda) with the final validation metric (and test
    perplexity for language models) as mean +- sample std over seeds, the seed count, runs that
    diverged, and the best lambda of each method's grid marked (:func:`best_lambdas`: the lowest
    validation mean as shown, on a tie the smallest lambda; the paper reports the best of its grid).
    Second, when the runs come from a preset of Tables 1-3: the paper's layout, methods as columns
    (each at its best lambda), next to the paper's numbers (:data:`per_core.configs.PAPER_RESULTS`),
    which are left out for ``--smoke`` runs (synthetic data: not comparable with them).

    Runs of different tasks (:func:`_task`: data, model, model arguments, smoke or not) get tables of
    their own, each headed by its task when there is more than one.

    Returns the text and one dict per (task, method, lambda): task (its title), method, lam, metric,
    mean, std, n, failed, and for a test metric ``test_metric``, ``test_mean``, ``test_std``.
    """
    # groups are keyed (task, method, lambda), so that runs of two tasks with one method and lambda never share
    # a row: their numbers are no samples of one quantity (an LM's perplexity and an image error; CIFAR-10 and
    # CIFAR-100)
    groups: dict[tuple[Task, str, float | None], list[dict[str, float]]] = {}
    failed: dict[tuple[Task, str, float | None], int] = {}
    presets: dict[Task, set] = {}  # task -> presets of its finished runs
    ends: dict[Task, set[int]] = {}  # task -> the epochs its finished runs end at
    unfinished, left_out = [], []
    # one run per (task, method, lambda, seed): a seed can sit in two folders (per/ and per-lam0.01/); the
    # table counts the first finished one (else the first failed one) and names the others
    seeds: dict[tuple[Task, str, float | None, int], list[tuple[int, RunDir, dict, list]]] = {}
    for run in find_runs(sweep):
        try:
            cfg = read_trained_config(run)
        except RunDirError as err:  # a damaged or hand-written config.json: named under the table
            left_out.append(str(err))
            continue
        rows, dropped = numbers_only(run.read_metrics())  # as analysis.load_run reads them
        if dropped:  # its final metrics may be among what was left out: the run is not counted
            left_out.append(f"{run.root} ({run.metrics_path.name}: {dropped})")
            continue
        status = 0 if rows and len(rows) >= cfg["epochs"] else 2  # finished, else unfinished
        status = 1 if (run.root / FAILED).is_file() else status
        key = (_task(cfg), cfg["method"], cfg["lam"] if cfg["method"] in REGULARIZERS else None, cfg["seed"])
        seeds.setdefault(key, []).append((status, run, cfg, rows))
    twice = []
    counted: dict[tuple[Task, str, float | None], list[tuple[RunDir, dict]]] = {}  # finished runs of each row
    for (task, method, lam, seed), found in seeds.items():
        key = (task, method, lam)
        groups.setdefault(key, [])
        status, run, cfg, rows = min(found, key=lambda f: f[0])  # stable: the first of equal status
        for _, other, other_cfg, _ in found:
            if other is not run:
                diff = config_differences(other_cfg, TrainConfig.from_dict(cfg), ignore=_RECORDING)
                how = f"holds seed {seed} with other settings ({diff})" if diff else f"repeats seed {seed}"
                twice.append(f"{other.root} {how}; counted: {run.root}")
        if status == 1:
            failed[key] = failed.get(key, 0) + 1
        elif status == 0:
            groups[key].append(_final_metrics(rows))
            counted.setdefault(key, []).append((run, cfg))
            ends.setdefault(task, set()).add(len(rows))
            presets.setdefault(task, set()).add(cfg.get("preset"))
        else:
            unfinished.append(f"{run.root} (epoch {len(rows)} of {cfg['epochs']})")
    order = {m: i for i, m in enumerate(METHODS)}

    def row_order(key: tuple[Task, str, float | None]) -> tuple[Any, ...]:  # task, METHODS' order, lambda
        return key[0], order.get(key[1], 99), key[2] or 0

    entries, tasks = [], []
    for (task, method, lam), finals in sorted(groups.items(), key=lambda kv: row_order(kv[0])):
        metric = next((k for k in _METRICS if finals and k in finals[0]), task[0])
        mean, std = _mean_std([f[metric] for f in finals if metric in f])
        e = {"task": _task_title(task), "method": method, "lam": lam, "metric": metric}
        e.update(mean=mean, std=std, n=len(finals), failed=failed.get((task, method, lam), 0))
        e["best_epoch_runs"] = sum(f["best"] for f in finals)  # runs counted at their best validation epoch
        test = "test_" + metric.removeprefix("val_")
        if finals and all(test in f for f in finals):
            e["test_metric"] = test
            e["test_mean"], e["test_std"] = _mean_std([f[test] for f in finals])
        entries.append(e)
        tasks.append(task)
    lines: list[str] = []
    starred = False
    for task in dict.fromkeys(tasks):  # one table per task, headed by it when there are several
        part = [e for e, t in zip(entries, tasks, strict=True) if t == task]
        lines += [""] if lines else []
        lines += [f"{_task_title(task)}:"] if len(set(tasks)) > 1 else []
        part_lines, part_starred = _metric_table(part, part[0]["metric"])
        lines += part_lines
        starred = starred or part_starred
    if starred:
        lines.append(f"* best lambda of the grid ({BEST_RULE}), as the paper reports")
    if best_runs := sum(e["best_epoch_runs"] for e in entries):
        last_runs = sum(e["n"] for e in entries if e["metric"] == "val_ppl") - best_runs
        lines.append(
            "note: language models are counted at each run's best validation epoch, val and test of its model "
            "(as pytorch/examples; metrics.jsonl's last row holds them as best_*, next to the last epoch's)"
            + (f"; {last_runs} run(s) trained before that are counted at their last epoch" if last_runs > 0 else "")
        )
    for task in dict.fromkeys(tasks):
        if len(epochs := ends.get(task, set())) > 1:
            of = f" of {_task_title(task)}" if len(set(tasks)) > 1 else ""
            lines.append(
                f"note: the runs{of} end at different epochs ({', '.join(map(str, sorted(epochs)))}), so rows compare "
                f"unequal training; run the sweep again with --epochs {max(epochs)} to extend the shorter ones"
            )
    lines += [f"note: {t}" for t in twice]
    lines += [f"note: {t}" for t in _mixed_rows(dict(sorted(counted.items(), key=lambda kv: row_order(kv[0]))))]
    if unfinished:
        shown = ", ".join(unfinished[:5]) + (f" and {len(unfinished) - 5} more" if len(unfinished) > 5 else "")
        lines.append(
            f"note: {len(unfinished)} unfinished run(s) left out: {shown}; continue each with "
            "python -m per_core.train --out RUN --resume (or run the sweep again)"
        )
    lines += [f"note: left out: {t}" for t in left_out]
    for task in dict.fromkeys(tasks):  # the paper's layout for a task whose runs are of one preset
        if len(found := presets.get(task, set())) == 1 and (preset := next(iter(found))) in PAPER_RESULTS:
            own = [e for e, t in zip(entries, tasks, strict=True) if t == task]
            lines += ["", *_paper_layout(preset, best_lambdas(own), smoke=task[4])]
    return "\n".join(lines), entries


def _mixed_rows(counted: Mapping[tuple[Task, str, float | None], list[tuple[RunDir, dict]]]) -> list[str]:
    """A line per table row whose seeds were trained with other settings than the row's most common ones
    (beyond seed, epochs and what :func:`_unreported` leaves out): their mean mixes recipes (e.g. a
    ResNet-110 run from before its warm-up epoch beside one after). The line names the runs apart from
    the most common settings (the first group on a tie) and how they differ; rows in ``counted``'s order."""
    lines = []
    for (_, method, lam), runs in counted.items():
        ignored = _unreported(method) | {"seed", "epochs"}
        groups: list[tuple[TrainConfig, list[RunDir]]] = []  # settings -> the runs trained with them
        for run, cfg in runs:
            settings = TrainConfig.from_dict(cfg)
            same = next((g for g in groups if not config_differences(cfg, g[0], ignore=ignored)), None)
            if same is None:
                groups.append((settings, [run]))
            else:
                same[1].append(run)
        if len(groups) < 2:
            continue
        common = max(groups, key=lambda g: len(g[1]))  # max keeps the first of equal size
        row = method if lam is None else f"{method} lambda {_lam_text(lam)}"
        apart = [
            f"{', '.join(str(r.root) for r in g_runs)} ({config_differences(g.to_dict(), common[0], ignore=ignored)})"
            for g, g_runs in groups
            if g_runs is not common[1]
        ]
        lines.append(
            f"the {row} row mixes settings: {'; '.join(apart)}, against {len(common[1])} run(s) like "
            f"{common[1][0].root}"
        )
    return lines


def _metric_table(entries: list[dict], metric: str) -> tuple[list[str], bool]:
    """The table rows of the entries of one metric, each method's best lambda marked; and whether one was."""
    best = best_lambdas(entries)
    unit = "%" if metric == "val_error" else ""
    test_metric = next((e["test_metric"] for e in entries if "test_metric" in e), None)
    head = f"{'method':<8} {'lambda':>8} {_label(metric) + ' (mean +- std)':>26}"
    test_head = f" {_label(test_metric) + ' (mean +- std)':>22}" if test_metric else ""
    lines = [head + test_head + f" {'seeds':>6}"]
    starred = False
    for e in entries:
        several = sum(x["method"] == e["method"] for x in entries) > 1
        mark = " *" if e["lam"] is not None and several and best.get(e["method"]) is e else ""
        lam = "-" if e["lam"] is None else _lam_text(e["lam"])
        note = f"  ({e['failed']} diverged)" if e["failed"] else ""
        test = f" {_pm(e.get('test_mean', math.nan), e.get('test_std', math.nan)):>22}" if test_metric else ""
        lines.append(f"{e['method']:<8} {lam:>8} {_pm(e['mean'], e['std'], unit):>26}{test} {e['n']:>6}{mark}{note}")
        starred = starred or bool(mark)
    return lines, starred


def _paper_layout(preset: str, best: dict[str, dict], smoke: bool = False) -> list[str]:
    """Methods as columns (each at its best lambda), this sweep's rows and the paper's, for one preset.

    With ``smoke`` (runs on synthetic data) the paper's rows are left out, and a line says why.
    """
    paper = PAPER_RESULTS[preset]
    methods = [m for m in METHODS if m in best or m in paper]
    metrics = list(next(iter(paper.values())))  # e.g. ["val_error"] or ["val_ppl", "test_ppl"]
    width = 18
    lines = [f"{preset} in the paper's layout (each method at its best lambda; n seeds):"]
    lines.append(f"{'':<22}" + "".join(f"{m:>{width}}" for m in methods))
    for metric in metrics:
        ours = []
        for m in methods:
            e = best.get(m)
            key = "mean" if metric.startswith("val_") else "test_mean"
            if e is None or key not in e or math.isnan(e[key]):
                ours.append("-")
            else:
                std = e["std"] if key == "mean" else e["test_std"]
                ours.append(f"{_pm(e[key], std)} ({e['n']})")
        lines.append(f"{'this sweep ' + _label(metric):<22}" + "".join(f"{v:>{width}}" for v in ours))
        if not smoke:
            row = [f"{paper[m][metric]:.2f}" if m in paper else "-" for m in methods]
            lines.append(f"{'paper ' + _label(metric):<22}" + "".join(f"{v:>{width}}" for v in row))
    if smoke:
        lines.append("(the paper's numbers are left out: they are on real data, not comparable with --smoke runs)")
    return lines


def _csv(text: str, convert: Callable[[str], Any], flag: str, form: str) -> list[Any]:
    """Comma-separated values of ``flag``, converted; a ValueError names the flag and the expected form."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    try:
        values = [convert(x) for x in items]
    except ValueError:
        raise ValueError(f"{flag} must be {form}, got {text!r}") from None
    if not values:
        raise ValueError(f"{flag} must be {form}, got {text!r}")
    return values


def _method(name: str) -> str:
    if name not in METHODS:
        raise ValueError(name)
    return name


def _config(args: argparse.Namespace) -> TrainConfig:
    base = get_preset(args.preset)
    base = base.as_smoke() if args.smoke else base
    changes: dict[str, Any] = {}
    if args.epochs is not None:
        changes["epochs"] = args.epochs  # milestones past the end are never reached: kept, so a sweep can be extended
    if args.data_dir is not None:
        changes["data_dir"] = args.data_dir
    if args.no_record:
        changes["record"] = None
    if args.per_locations is not None:
        changes["per_locations"] = parse_per_locations(args.per_locations)
    cfg = base.replace(**changes)
    cfg.validate()
    return cfg


def _check_methods(base: TrainConfig, methods: Sequence[str], args: argparse.Namespace) -> None:
    """Refuse a method that does not apply to the preset's model (before any run); note unused flags."""
    for method in methods:
        validate_config(base.replace(method=method))
    lam_flag = "--lams" if args.lams is not None else None
    given = {"per_locations": args.per_locations is not None, "data_dir": args.data_dir is not None}
    for line in flag_notes(base, methods, lam_flag=lam_flag, method_flag="--methods", **given):
        note(line)


#: The flags of a sweep to run, which ``--table`` (a sweep already run) does not use.
_RUN_FLAGS = ("preset", "methods", "seeds", "lams", "epochs", "per_locations", "data_dir", "out", "smoke", "no_record")


def main(argv: Sequence[str] | None = None) -> int:
    p = OneLineArgumentParser(prog="python -m per_core.sweep", description="Run methods x lambdas x seeds.")
    p.add_argument("--preset", default="demo", choices=sorted(PRESETS))
    p.add_argument(
        "--methods",
        default="vanilla,bn,per",
        help=f"comma-separated, of: {', '.join(METHODS)} (default vanilla,bn,per)",
    )
    p.add_argument("--seeds", default="0,1,2", help="comma-separated integer seeds (default 0,1,2)")
    p.add_argument(
        "--lams",
        help="comma-separated lambdas for per/vcl/l1/l2, or 'grid': the paper's grid of the preset for per, "
        "per_core.configs.PENALTY_GRIDS for the penalties (default: each method's own default strength)",
    )
    p.add_argument("--epochs", type=int, help="override the preset's epochs")
    p.add_argument("--per-locations", help="conv layers: spatial locations per image used by PER, or 'all'")
    p.add_argument("--data-dir", type=nonempty_path, help="folder with the real data files")
    p.add_argument("--out", type=nonempty_folder, help="sweep directory")
    p.add_argument("--table", type=nonempty_folder, help="print the results table of an existing sweep and exit")
    p.add_argument("--smoke", action="store_true", help="synthetic data, a few steps per run")
    p.add_argument("--no-record", action="store_true", help="do not record activations (faster, smaller)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (a log or a pipe never gets them)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = p.parse_args(argv)

    def body() -> int:
        if args.table is not None and (ignored := [f for f in _RUN_FLAGS if getattr(args, f) != p.get_default(f)]):
            flags = ", ".join("--" + f.replace("_", "-") for f in ignored)
            note(f"note: --table prints the table of an existing sweep: {flags} ignored")
        if args.table is None:
            tune_malloc()  # before the first tensors: see per_core.allocator
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # train() would start and end a process group per run
                raise ValueError(
                    "a sweep runs in one process: start it with python -m per_core.sweep, or data-parallel "
                    "runs one at a time with torchrun ... -m per_core.train --out SWEEP/METHOD-lamL/seedS"
                )
            if args.out is None:
                raise ValueError("--out is required to run a sweep (or use --table SWEEP_DIR)")
            if args.out.exists() and not args.out.is_dir():
                raise ValueError(f"--out {args.out} is a file, not a folder: choose a folder for the sweep")
            check_not_a_run(args.out, "a sweep writes its runs")
            methods = _csv(args.methods, _method, "--methods", f"a comma-separated list of {', '.join(METHODS)}")
            seeds = _csv(args.seeds, int, "--seeds", "comma-separated integers, e.g. 0,1,2")
            lams = None
            if args.lams == "grid":
                lams = {m: lambda_grid(args.preset, m) for m in methods if m in REGULARIZERS}
            elif args.lams:
                lams = _csv(args.lams, float, "--lams", "comma-separated numbers or 'grid'")
                if any(not (math.isfinite(x) and x >= 0) for x in lams):
                    raise ValueError(f"--lams must be finite numbers >= 0, got {args.lams!r}")
            base = _config(args)
            _check_methods(base, methods, args)
            run_sweep(base, args.out, methods, seeds, lams, progress=not args.no_progress)
        text, _ = results_table(args.table or args.out)
        say(text)
        return 0

    return run_command(
        body,
        debug=args.debug,
        errors=(ValueError, OSError, TrainingError),
        interrupted=lambda: "interrupted: finished runs are kept; run the same command again to continue",
    )


if __name__ == "__main__":
    sys.exit(main())
