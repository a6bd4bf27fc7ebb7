"""Optuna studies over a run config (``o2o tune``).

The search space, the metric and the pruner live in the config's ``tune:`` section. Each trial is an ordinary
training run (its own run folder under ``runs/tune-<study>/trials/``) that reports its validation metric after
every epoch to Optuna, which may stop it early (pruning); trials never look at the test split. The study is
stored in SQLite by default (``runs/optuna.db``, one machine, readable by optuna-dashboard) or in PostgreSQL
with ``--storage postgresql://...`` so that workers on several hosts share it. A worker killed mid-trial stops
writing heartbeats: the next worker (or the rerun command) marks its trial failed and retries it once with
the same parameters. ``--trials N`` is the study's target — N finished (complete or pruned) trials over all
workers and reruns — so rerunning the command continues where it stopped.

At the end the study folder holds the best config as YAML, the trials as CSV, optimisation-history and
parameter-importance plots, ``study.json`` and ``study.md``; ``--retrain`` trains the best config once more
(recommender: on train + validation for the winner's epochs) and evaluates it once on test.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState
from pydantic import ValidationError

from training.config import ParamSpec, RecommenderRunConfig, RunConfig, dump_config, with_overrides
from training.resume import changed_keys
from training.train import train

STUDY_MD = "study.md"
STUDY_JSON = "study.json"
BEST_CONFIG = "best_config.yaml"
TRIALS_CSV = "trials.csv"
HISTORY_PNG = "optimization_history.png"
IMPORTANCE_PNG = "param_importances.png"
MINIMISED = ("log_loss", "brier", "ece")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
INTENT_METRICS = ("roc_auc", "pr_auc", "log_loss")  # logged by the intent module every validation epoch
Direction = Literal["maximize", "minimize"]


class InvalidTrialConfig(ValueError):
    """The sampled parameters make an invalid config (e.g. d_model not divisible by n_heads): the trial
    fails, the study goes on."""


def objective_metric(cfg: RunConfig) -> tuple[str, Direction]:
    """(metric name as in metrics.json, "maximize" | "minimize"); an unknown name is an error listing the
    names this task logs every validation epoch."""
    if isinstance(cfg, RecommenderRunConfig):
        k = cfg.eval.k
        allowed: tuple[str, ...] = (f"ndcg@{k}", f"hr@{k}", f"mrr@{k}")
    else:
        allowed = INTENT_METRICS
    name = cfg.tune.metric or allowed[0]
    if name not in allowed:
        raise ValueError(
            f"tune.metric {name!r} is not a validation metric of this {cfg.task} config: choose one of "
            f"{list(allowed)}"
        )
    return name, "minimize" if name in MINIMISED else "maximize"


def logged_name(metric: str) -> str:
    """The name under which the Lightning module logs a validation metric (``ndcg@10`` → ``val_ndcg10``)."""
    return "val_" + metric.replace("@", "")


class PruneOnValidation(L.Callback):
    """Reports the validation metric to the trial after every validation epoch and stops the run when the
    pruner says so. A metric the module does not log is an error, not a silent no-op (Optuna's own
    Lightning callback only warns)."""

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial, self.metric = trial, metric

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return  # only the epochs of fit(), not the validate() after it
        value = trainer.callback_metrics.get(self.metric)
        if value is None:
            raise KeyError(
                f"the validation metric {self.metric!r} was not logged; logged: {sorted(trainer.callback_metrics)}"
            )
        epoch = trainer.current_epoch
        self.trial.report(float(value), step=epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}: {self.metric}={float(value):.4f}")


def storage_url(url: str | None, runs_dir: Path) -> str:
    """The SQLAlchemy URL of the study storage: default SQLite in ``runs_dir/optuna.db``; PostgreSQL URLs
    use the psycopg 3 driver."""
    if url is None:
        runs_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(runs_dir / 'optuna.db').resolve()}"
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    if not url.startswith(("sqlite:", "postgresql+", "mysql")):
        raise ValueError(f"--storage {url!r}: expected sqlite:///FILE or postgresql://USER@HOST:PORT/DB")
    return url


STORAGE_OPEN_TRIES = 5  # workers started together race to create the schema of an empty database


def open_storage(url: str, heartbeat_seconds: int) -> RDBStorage:
    """RDB storage with heartbeats: a trial whose worker died is failed after 3 silent heartbeats and
    retried once with the same parameters.

    Workers started at the same moment on an empty database all try to create Optuna's tables and its
    alembic version row; all but one fail on the duplicate (IntegrityError, or "already exists"). The schema
    is then there: opening again, after a short wait, succeeds."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    engine: dict[str, Any] = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(1, STORAGE_OPEN_TRIES + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(
                    url,
                    engine_kwargs=engine,
                    heartbeat_interval=heartbeat_seconds,
                    grace_period=3 * heartbeat_seconds,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
                )
        except (IntegrityError, ProgrammingError):
            if attempt == STORAGE_OPEN_TRIES:
                raise
            time.sleep(0.5 * attempt)
    raise AssertionError("unreachable")


def suggest(trial: optuna.Trial, space: dict[str, ParamSpec]) -> dict[str, Any]:
    """One value per dotted key of the search space."""
    out: dict[str, Any] = {}
    for key, p in space.items():
        if p.type == "categorical":
            assert p.choices is not None
            out[key] = trial.suggest_categorical(key, p.choices)
        elif p.type == "int":
            assert p.low is not None and p.high is not None
            step = int(p.step) if p.step else 1
            out[key] = trial.suggest_int(key, int(p.low), int(p.high), step=step, log=p.log)
        else:
            assert p.low is not None and p.high is not None
            out[key] = trial.suggest_float(key, p.low, p.high, step=p.step, log=p.log)
    return out


def overrides_for(params: dict[str, Any]) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in params.items()]


def check_space(cfg: RunConfig) -> None:
    """Every key of the space must be a config field that accepts the range's ends (caught before any
    trial runs, not in trial 17)."""
    if not cfg.tune.space:
        raise ValueError(f"config {cfg.name!r} has no tune.space: add the dotted keys to search")
    for key, p in cfg.tune.space.items():
        if key.split(".")[0] in ("tune", "data", "name", "task"):
            raise ValueError(f"tune.space key {key!r}: only model, train and eval settings can be tuned")
        ends = p.choices if p.choices is not None else [p.low, p.high]
        for v in ends:
            v = int(v) if p.type == "int" and v is not None else v
            try:
                with_overrides(cfg, [f"{key}={json.dumps(v)}"])
            except ValidationError as e:
                raise ValueError(
                    f"tune.space {key!r} = {v!r} is not a valid setting: {_first_error(e)}"
                ) from None


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    return f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}"


@dataclass(frozen=True)
class TuneResult:
    study_name: str
    out_dir: Path
    summary: dict[str, Any]
    best_config: Path | None
    retrained: Path | None


def tune(
    cfg: RunConfig,
    n_trials: int,
    runs_dir: Path = Path("runs"),
    storage: str | None = None,
    study_name: str | None = None,
    worker: int = 0,
    retrain: bool = False,
    progress: Callable[[str], None] = print,
) -> TuneResult:
    """Run (or continue) the study until it holds ``n_trials`` finished trials; write its outputs."""
    if n_trials < 1:
        raise ValueError(f"--trials must be at least 1, got {n_trials}")
    metric, direction = objective_metric(cfg)
    check_space(cfg)
    name = study_name or cfg.name
    out_dir = runs_dir / f"tune-{name}"
    trials_dir = out_dir / "trials"
    url = storage_url(storage, runs_dir)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = open_storage(url, cfg.tune.heartbeat_seconds)
    study = optuna.create_study(
        storage=store, study_name=name, direction=direction, load_if_exists=True, pruner=_pruner(cfg)
    )
    _check_same_config(study, cfg)
    # seed per worker and per restart: parallel workers and a rerun do not propose the same start points
    seed = cfg.tune.sampler_seed + 1000 * worker + len(study.trials)
    study.sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=cfg.tune.startup_trials)
    recommender = isinstance(cfg, RecommenderRunConfig)

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, cfg.tune.space)
        extra = [f"name={json.dumps(f'{cfg.name}-t{trial.number}')}"]
        if recommender:
            extra.append("eval.baselines=false")  # they do not depend on the trial's settings
        try:
            tcfg = with_overrides(cfg, [*overrides_for(params), *extra])
        except ValidationError as e:
            raise InvalidTrialConfig(f"trial {trial.number}: {_first_error(e)}") from None
        trial.set_user_attr("worker", worker)
        result = train(
            tcfg,
            trials_dir,
            progress_bar=False,
            callbacks=[PruneOnValidation(trial, logged_name(metric))],
            evaluate_test=False,
        )
        trial.set_user_attr("run_dir", str(result.run_dir))
        trial.set_user_attr("best_epoch", result.metrics["best_epoch"])
        trial.set_user_attr("epochs_trained", result.metrics["epochs_trained"])
        return float(result.metrics["model"]["val"][metric])

    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        done = sum(t.state in FINISHED for t in study.get_trials(deepcopy=False))
        value = "" if trial.value is None else f" {metric}={trial.value:.4f}"
        try:
            best = f" (best {study.best_value:.4f}, trial {study.best_trial.number})"
        except ValueError:
            best = ""
        steps = len(trial.intermediate_values)
        progress(
            f"trial {trial.number} {trial.state.name.lower()} after {steps} epochs{value}{best} — {done}/{n_trials}"
        )

    t0 = time.perf_counter()
    finished = sum(t.state in FINISHED for t in study.get_trials(deepcopy=False))
    if finished < n_trials:
        progress(
            f"study {name!r} ({url.split('://')[0]}): {finished} of {n_trials} trials finished, worker {worker}"
        )
        study.optimize(
            objective,
            n_trials=n_trials - finished,
            callbacks=[MaxTrialsCallback(n_trials, states=FINISHED), report],
            catch=(InvalidTrialConfig,),
            gc_after_trial=True,
        )
    else:
        progress(f"study {name!r} already holds {finished} finished trials (target {n_trials})")
    wall = time.perf_counter() - t0
    return _write_outputs(study, cfg, metric, direction, out_dir, url, wall, retrain, progress)


def _pruner(cfg: RunConfig) -> optuna.pruners.BasePruner:
    t = cfg.tune
    if t.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=t.startup_trials, n_warmup_steps=t.warmup_epochs)
    if t.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=cfg.train.max_epochs, reduction_factor=3
        )
    return optuna.pruners.NopPruner()


def _check_same_config(study: optuna.Study, cfg: RunConfig) -> None:
    """A study belongs to one config: a rerun or another worker with a different one is refused."""
    doc = cfg.model_dump(mode="json")
    saved = study.user_attrs.get("config")
    if saved is None:
        study.set_user_attr("config", doc)
    elif saved != doc:
        differs = changed_keys(saved, doc)
        raise ValueError(
            f"study {study.study_name!r} was started with a different config (differs in {differs}): "
            "use the same config, or a new --study name"
        )


def _write_outputs(
    study: optuna.Study,
    cfg: RunConfig,
    metric: str,
    direction: str,
    out_dir: Path,
    url: str,
    wall: float,
    retrain: bool,
    progress: Callable[[str], None],
) -> TuneResult:
    out_dir.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    summary: dict[str, Any] = {
        "study": study.study_name,
        "storage": url.split("://")[0] + "://…" if "@" in url else url,  # no credentials in files
        "task": cfg.task,
        "metric": metric,
        "direction": direction,
        "pruner": cfg.tune.pruner,
        "trials": counts,
        "wall_seconds_this_worker": round(wall, 1),
        "trial_seconds_total": round(
            sum((t.duration.total_seconds() if t.duration else 0.0) for t in trials), 1
        ),
    }
    best_path, retrained = None, None
    try:
        best = study.best_trial
    except ValueError:
        best = None
    if best is not None:
        best_cfg = with_overrides(
            cfg, [*overrides_for(best.params), f"name={json.dumps(cfg.name + '-tuned')}"]
        )
        best_path = out_dir / BEST_CONFIG
        best_path.write_text(
            f"# best of study {study.study_name!r}: trial {best.number}, {metric}={best.value:.6f}\n"
            + dump_config(best_cfg)
        )
        summary["best"] = {
            "trial": best.number,
            "value": best.value,
            "params": best.params,
            "best_epoch": best.user_attrs.get("best_epoch"),
            "run_dir": best.user_attrs.get("run_dir"),
        }
        if retrain:
            retrained = _retrain(best_cfg, best, out_dir, progress)
            metrics = json.loads((retrained / "metrics.json").read_text())
            summary["retrained"] = {
                "run_dir": str(retrained),
                "protocol": metrics["protocol"],
                "test": metrics["model"]["test"],
            }
    (study_df := study.trials_dataframe()).to_csv(out_dir / TRIALS_CSV, index=False)
    plots = _plots(study, out_dir)
    (out_dir / STUDY_JSON).write_text(json.dumps(summary, indent=2, default=str))
    (out_dir / STUDY_MD).write_text(_markdown(summary, study_df, plots, best_path))
    return TuneResult(study.study_name, out_dir, summary, best_path, retrained)


def _retrain(
    best_cfg: RunConfig, best: optuna.trial.FrozenTrial, out_dir: Path, progress: Callable[[str], None]
) -> Path:
    """The winner, once more, evaluated once on test. Recommender: on train + validation for the epochs the
    winning trial needed. Intent: on the standard split — its calibration map is fitted on validation, so
    validation cannot join the training data."""
    from experiments.report import write_report

    overrides = [f"name={json.dumps(best_cfg.name + '-retrained')}"]
    if isinstance(best_cfg, RecommenderRunConfig):
        epochs = int(best.user_attrs.get("best_epoch", best_cfg.train.max_epochs - 1)) + 1
        overrides += ["train.fit_on=train+val", f"train.max_epochs={epochs}"]
        progress(f"retraining trial {best.number}'s config on train + validation for {epochs} epochs")
    else:
        progress(f"retraining trial {best.number}'s config (calibrated on validation) and testing it once")
    result = train(with_overrides(best_cfg, overrides), out_dir, progress_bar=True)
    write_report(result.run_dir)
    return result.run_dir


def _plots(study: optuna.Study, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for file, plot in (
            (HISTORY_PNG, ovm.plot_optimization_history),
            (IMPORTANCE_PNG, ovm.plot_param_importances),
        ):
            try:
                plot(study)
            except (ValueError, RuntimeError):  # importances need ≥ 2 complete trials that differ
                continue
            fig = plt.gcf()  # the figure the plot drew on
            fig.set_size_inches(8, 4.5)
            fig.tight_layout()
            fig.savefig(out_dir / file, dpi=110)
            plt.close(fig)
            written.append(file)
    return written


def _markdown(summary: dict[str, Any], df: Any, plots: list[str], best_path: Path | None) -> str:
    c = summary["trials"]
    lines = [
        f"# Study `{summary['study']}` ({summary['task']})",
        "",
        f"Objective: validation {summary['metric']} ({summary['direction']}), pruner {summary['pruner']}; "
        f"storage `{summary['storage']}`.",
        "",
        f"Trials: {c.get('complete', 0)} complete, {c.get('pruned', 0)} pruned, {c.get('fail', 0)} failed, "
        f"{c.get('running', 0)} running, {c.get('waiting', 0)} waiting. Wall time of this worker "
        f"{summary['wall_seconds_this_worker']} s; all trials together {summary['trial_seconds_total']} s.",
        "",
    ]
    if "best" in summary:
        b = summary["best"]
        lines += [
            f"**Best: trial {b['trial']}, {summary['metric']} = {b['value']:.4f}** (best epoch {b['best_epoch']}).",
            "",
            "| parameter | value |",
            "|---|---|",
            *(f"| {k} | {v} |" for k, v in b["params"].items()),
            "",
            f"Best config: `{best_path}` — `o2o train {summary['task']} --config {best_path}`.",
            "",
        ]
    if "retrained" in summary:
        r = summary["retrained"]
        figures = ", ".join(f"{k} {v:.4f}" for k, v in r["test"].items() if isinstance(v, float))
        lines += [f"Retrained once ({r['protocol']}): test {figures}. Run: `{r['run_dir']}`.", ""]
    lines += [f"![{p}]({p})" for p in plots] + [""]
    if len(df):
        cols = [
            c for c in df.columns if c in ("number", "state", "value", "duration") or c.startswith("params_")
        ]
        lines += ["## Trials", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for _, row in df[cols].iterrows():
            lines.append("| " + " | ".join(_cell(row[c]) for c in cols) + " |")
    lines += [
        "",
        "Browse the study: `optuna-dashboard <storage URL>` (e.g. `optuna-dashboard sqlite:///runs/optuna.db`).",
        "",
    ]
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "" if v != v else f"{v:.4g}"
    if hasattr(v, "total_seconds"):
        return f"{v.total_seconds():.1f} s"
    return str(v)
