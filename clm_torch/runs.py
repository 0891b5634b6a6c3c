"""Load what a run directory holds: its config, its trained models and its metrics.

A single training run (``clm-train``)::

    <run_dir>/.hydra/config.yaml
    <run_dir>/checkpoints/best.ckpt   (else last.ckpt)
    <run_dir>/metrics.json

A pipeline run holds one sub-run per model, each with its own ``checkpoints/``::

    <run_dir>/.hydra/config.yaml
    <run_dir>/<model_name>/checkpoints/best.ckpt
    <run_dir>/<model_name>/metrics.json

In a notebook::

    from clm_torch import load_run
    run = load_run("logs/churn_telco/runs/2026-01-01_12-00-00")
    run.model.predict_proba(raw_customers)     # the one model of a single run
    run.models["churn"], run.config.model.lr, run.metrics["test/auroc"]

Checkpoints always load with ``weights_only=True`` (see :meth:`CLMModule.load_from_checkpoint`);
the model class is read from ``checkpoint["clm_model_class"]``.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import pkgutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from clm_torch.models.base import MODEL_CLASS_KEY, CLMModule
from clm_torch.utils.io import CheckpointError, load_checkpoint_safely

log = logging.getLogger(__name__)

CHECKPOINT_NAMES = ("best.ckpt", "last.ckpt")  # preference order inside a checkpoints/ folder

# Short names for a single run's model when the run's config does not say which model group it used.
SHORT_NAMES = {"ChurnClassifier": "churn", "InfoGapVAE": "vae", "EmbeddingRecommender": "recommender"}


def model_classes() -> dict[str, type[CLMModule]]:
    """Every :class:`CLMModule` subclass in ``clm_torch.models``, by ``__qualname__``.

    A model module that fails to import is skipped with a warning (its checkpoints then fail
    to load with a clear :class:`CheckpointError`).
    """
    import clm_torch.models as pkg

    for info in pkgutil.iter_modules(pkg.__path__, prefix=f"{pkg.__name__}."):
        if info.name.endswith(".base") or info.ispkg:
            continue
        try:
            importlib.import_module(info.name)
        except Exception as e:  # noqa: BLE001 - one broken model module must not hide the others
            log.warning("could not import %s: %s", info.name, e)
    found: dict[str, type[CLMModule]] = {}
    todo = list(CLMModule.__subclasses__())
    while todo:
        cls = todo.pop()
        found.setdefault(cls.__qualname__, cls)
        todo.extend(cls.__subclasses__())
    return found


def model_class_for(checkpoint: dict[str, Any], path: str | Path, config: DictConfig | None = None
                    ) -> type[CLMModule]:
    """The class that wrote ``checkpoint``: ``clm_model_class``, else the run config's ``model._target_``.

    Raises:
        CheckpointError: no known clm_torch model class matches.
    """
    name = checkpoint.get(MODEL_CLASS_KEY)
    classes = model_classes()
    if name is not None:
        if name in classes:
            return classes[name]
        raise CheckpointError(f"{path}: holds a {name}, which is not a clm_torch model class "
                              f"(known: {sorted(classes)})")
    target = OmegaConf.select(config, "model._target_") if config is not None else None
    if target:
        import hydra.utils

        cls = hydra.utils.get_class(str(target))
        if isinstance(cls, type) and issubclass(cls, CLMModule):
            return cls
    raise CheckpointError(f"{path}: no '{MODEL_CLASS_KEY}' in the checkpoint and no model._target_ in the run "
                          f"config: cannot tell which model class to load it with")


def load_model(ckpt_path: str | Path, config: DictConfig | None = None, map_location: Any = "cpu") -> CLMModule:
    """Load any clm_torch checkpoint (weights + fitted preprocessing) as its own model class, in eval mode.

    Raises:
        CheckpointError: missing, corrupt, unsafe or unknown checkpoint, or one without preprocessing.
    """
    ckpt = load_checkpoint_safely(ckpt_path)
    cls = model_class_for(ckpt, ckpt_path, config)
    del ckpt
    model = cls.load_from_checkpoint(ckpt_path, map_location=map_location)
    if not model.preprocessing:
        raise CheckpointError(f"{ckpt_path}: holds no fitted preprocessing (saved outside clm-train, e.g. by a plain "
                              "Lightning Trainer), so it cannot score raw data; train with clm-train, or call "
                              "model.set_preprocessing(datamodule.preprocessing_state()) before saving")
    model.eval()
    return model


def find_checkpoint(directory: str | Path) -> Path | None:
    """``<directory>/checkpoints/best.ckpt``, else ``last.ckpt``, else None."""
    for name in CHECKPOINT_NAMES:
        p = Path(directory) / "checkpoints" / name
        if p.is_file():
            return p
    return None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a (single-model) run directory → its best (else last) checkpoint.

    Raises:
        CheckpointError: nothing loadable there.
    """
    p = Path(path)
    if p.is_dir():
        found = find_checkpoint(p)
        if found is None:
            subs = sorted(d.name for d in p.iterdir() if d.is_dir() and find_checkpoint(d) is not None)
            hint = (f"; it holds several models, pass one of: {', '.join(str(p / s) for s in subs)}" if subs
                    else "")
            raise CheckpointError(f"{p}: no checkpoints/best.ckpt or checkpoints/last.ckpt in this directory{hint}")
        return found
    if not p.exists():
        raise CheckpointError(f"{p}: checkpoint not found")
    return p


def read_config(run_dir: str | Path) -> DictConfig:
    """``<run_dir>/.hydra/config.yaml`` (else ``<run_dir>/config.yaml``); an empty config when neither exists."""
    for rel in (".hydra/config.yaml", "config.yaml"):
        p = Path(run_dir) / rel
        if p.is_file():
            cfg = OmegaConf.load(p)
            if isinstance(cfg, DictConfig):
                return cfg
    return OmegaConf.create({})


def _model_choice(run_dir: Path) -> str | None:
    """The ``model=<choice>`` of a run, from ``.hydra/hydra.yaml`` (e.g. ``churn``)."""
    p = run_dir / ".hydra" / "hydra.yaml"
    if not p.is_file():
        return None
    choice = OmegaConf.select(OmegaConf.load(p), "hydra.runtime.choices.model")
    return str(choice) if choice else None


def _read_json(p: Path) -> dict[str, Any]:
    return json.loads(p.read_text()) if p.is_file() else {}


@dataclasses.dataclass
class Run:
    """A finished run, loaded back.

    Attributes:
        path: the run directory.
        config: its resolved config (``.hydra/config.yaml``).
        models: model name → loaded model in eval mode (``churn``, ``vae``, ... or the sub-run folder name).
        checkpoints: model name → the checkpoint file it was loaded from.
        metrics: the run's ``metrics.json``; for a pipeline run without a top-level one, model name → its metrics.
    """

    path: Path
    config: DictConfig
    models: dict[str, CLMModule]
    checkpoints: dict[str, Path]
    metrics: dict[str, Any]

    @property
    def model(self) -> CLMModule:
        """The run's only model (raises when the run holds several; use ``models[name]``)."""
        if len(self.models) != 1:
            raise KeyError(f"this run holds {len(self.models)} models ({', '.join(self.models)}); use run.models[name]")
        return next(iter(self.models.values()))

    def __repr__(self) -> str:
        models = ", ".join(f"{k}: {type(v).__name__}" for k, v in self.models.items())
        return f"Run({str(self.path)!r}, models={{{models}}}, metrics={len(self.metrics)} keys)"


def _configured_log_dir() -> Path | None:
    """``paths.log_dir`` where ``configs/local/default.yaml`` or ``CLM_ROOT`` puts the logs at an absolute
    place (where clm-train, clm-pipeline and compose_config then write); None otherwise, or when the
    configs cannot be composed here (inside a running Hydra app)."""
    try:
        from hydra import compose, initialize_config_dir

        from clm_torch.config import CONFIG_DIR

        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            log_dir = Path(str(compose("train.yaml").paths.log_dir))
    except Exception:  # noqa: BLE001 - the folders above start are searched all the same
        return None
    return log_dir if log_dir.is_absolute() else None


def latest_run(task: str = "pipeline", start: str | Path = ".") -> Path | None:
    """The most recently finished run (the newest ``metrics.json``) in ``logs/<task>/runs/`` of
    ``start`` and of every folder above it (a notebook's folder is usually below the project's, and
    both may hold runs), and in ``<paths.log_dir>/<task>/runs/`` when ``configs/local/default.yaml``
    or ``CLM_ROOT`` sends the logs elsewhere; None when there is none.

    Example::

        run = load_run(latest_run("pipeline"))   # the run `make run` wrote last
    """
    log_dirs = [folder / "logs" for folder in (Path(start).resolve(), *Path(start).resolve().parents)]
    configured = _configured_log_dir()
    if configured is not None and configured not in log_dirs:
        log_dirs.append(configured)
    finished = [p for log_dir in log_dirs for p in (log_dir / task / "runs").glob("*/metrics.json")]
    return max(finished, key=lambda p: (p.stat().st_mtime, str(p))).parent if finished else None


def load_run(run_dir: str | Path, map_location: Any = "cpu") -> Run:
    """Load a run directory's config, trained models (best checkpoint, else last) and metrics.

    Works for a single ``clm-train`` run (``<run_dir>/checkpoints/``) and for runs that hold one
    sub-run per model (``<run_dir>/<model_name>/checkpoints/``).

    Raises:
        CheckpointError: the directory does not exist or holds no checkpoint; a checkpoint is
            corrupt, unsafe or of an unknown class.
    """
    path = Path(run_dir).expanduser().resolve()
    if not path.is_dir():
        raise CheckpointError(f"{path}: run directory not found")
    jobs = sorted((d.name for d in path.iterdir() if d.name.isdigit() and (d / ".hydra").is_dir()),
                  key=lambda n: (len(n), n))
    sweep_files = ("multirun.yaml", "optimization_results.yaml")  # the basic sweeper's, Optuna's
    if not (path / ".hydra").is_dir() and (jobs or any((path / f).is_file() for f in sweep_files)):
        raise CheckpointError(f"{path}: this is a sweep (multirun) directory; load one of its jobs, e.g. "
                              f"load_run('{path / (jobs[0] if jobs else '0')}'), or compare them with "
                              f"tensorboard --logdir {path}")
    runs = sorted(d.name for d in path.iterdir() if (d / ".hydra").is_dir() and find_checkpoint(d) is not None)
    if not (path / ".hydra").is_dir() and find_checkpoint(path) is None and runs:
        # logs/<task>/runs/: each sub-folder is a run of its own, not a model of this one
        task = path.parent.name if path.name == "runs" else "<task_name>"
        raise CheckpointError(f"{path}: a folder of runs ({len(runs)}), not one run; load one of them, e.g. "
                              f"load_run('{path / runs[-1]}'), or the newest finished one with "
                              f"load_run(latest_run('{task}'))")
    config = read_config(path)
    found: dict[str, Path] = {}
    top = find_checkpoint(path)
    if top is not None:
        ckpt = load_checkpoint_safely(top)
        name = _model_choice(path) or SHORT_NAMES.get(str(ckpt.get(MODEL_CLASS_KEY)), "model")
        found[name] = top
    for sub in sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")):
        if sub.name == "checkpoints":
            continue
        ckpt_file = find_checkpoint(sub)
        if ckpt_file is not None:
            found.setdefault(sub.name, ckpt_file)
    if not found:
        raise CheckpointError(f"{path}: no checkpoints/best.ckpt or last.ckpt here or in its sub-folders "
                              f"(did the run stop before its first epoch ended?)")
    models = {name: load_model(p, _sub_config(config, path, p), map_location) for name, p in found.items()}
    metrics = _read_json(path / "metrics.json")
    if not metrics:
        metrics = {name: m for name in found if (m := _read_json(found[name].parent.parent / "metrics.json"))}
    return Run(path=path, config=config, models=models, checkpoints=found, metrics=metrics)


def _sub_config(config: DictConfig, run_dir: Path, ckpt: Path) -> DictConfig:
    """The config that describes the model of ``ckpt``: the sub-run's own, else the run's."""
    sub = ckpt.parent.parent
    if sub != run_dir:
        own = read_config(sub)
        if len(own):
            return own
    return config


# ----------------------------------------------------------------------------- Hydra callback


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - Hydra < 1.1
    _HydraCallback = object


class RunDirGuard(_HydraCallback):
    """Hydra callback (``configs/hydra/default.yaml``): refuse a command whose run directory (or, for a
    ``-m`` sweep, a job directory of its sweep directory) already holds a finished run *before* Hydra
    writes its ``.hydra/`` files there, so that a refused ``clm-train`` (or ``clm-evaluate``,
    ``clm-pipeline``) leaves the earlier run's recorded config as it was. One line on stderr, exit
    code 2. Resuming (``ckpt_path=...``) is allowed for ``clm-train`` only (see :meth:`_can_resume`)."""

    @staticmethod
    def _can_resume(config: DictConfig) -> bool:
        """Whether the program that runs can continue a run: only ``clm-train`` (``configs/train.yaml``).
        Decided by the program's config (``hydra.job.config_name``), not by ``task_name``, which an
        experiment sets (``clm-pipeline experiment=pipeline_events`` runs as ``pipeline_events``)."""
        name = str(OmegaConf.select(config, "hydra.job.config_name", default=None) or "")
        return name.removesuffix(".yaml") == "train"

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        run_dir = Path(str(config.hydra.run.dir))
        self._check([run_dir], config)
        self._check_settings(config, run_dir)
        self._keep_record(run_dir, config)

    @staticmethod
    def _check_settings(config: DictConfig, run_dir: Path) -> None:
        """Refuse a bad setting (``model.lr=-1``, ``data.path`` left unset, ``horizon_days=0``) before
        Hydra creates the run directory, as the command itself would after it (one line, exit 2), so
        that it leaves no folder of ``.hydra/`` and a log behind. Anything these early checks cannot
        judge here is left to the command's own checks, which run again inside it."""
        import sys

        from clm_torch.data.schema import SchemaError
        from clm_torch.train import check_before_run
        from clm_torch.utils.io import SettingError

        from omegaconf import open_dict

        program = str(OmegaConf.select(config, "hydra.job.config_name", default=None) or "").removesuffix(".yaml")
        if program not in ("train", "pipeline", "evaluate"):
            return
        try:
            from hydra.core.hydra_config import HydraConfig

            # the job's config as the job will see it: without Hydra's node, its output_dir the run directory
            # to be made; Hydra's config is set for the config-group choices named in messages (the job
            # sets it again)
            job = config.copy()
            with open_dict(job):
                job.pop("hydra", None)
                if isinstance(job.get("paths"), DictConfig):
                    job.paths.output_dir = str(run_dir.resolve())
            HydraConfig.instance().set_config(config.copy())
            check_before_run(job, program)
        except (SettingError, SchemaError, CheckpointError) as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)
        except Exception:  # noqa: BLE001 - e.g. a value that needs the job's runtime to resolve: judged in the job
            log.debug("settings not checked before the run directory exists", exc_info=True)

    @staticmethod
    def _keep_record(run_dir: Path, config: DictConfig) -> None:
        """A resume (``ckpt_path=...`` into a run directory with a ``.hydra/`` record) writes its own
        Hydra files to ``.hydra/resume_<stamp>/`` instead of over the run's, and warns when it drops
        settings of the original command (the resumed run then trains with the defaults)."""
        import datetime
        import sys

        from omegaconf import open_dict, read_write

        from clm_torch.train import resumes

        sub = config.hydra.get("output_subdir")
        record = run_dir / str(sub or ".hydra")
        if not sub or not RunDirGuard._can_resume(config) or not resumes(config, run_dir) \
                or not (record / "config.yaml").exists():
            return
        stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.output_subdir = f"{sub}/resume_{stamp}"
        try:
            original = [str(o) for o in OmegaConf.load(record / "overrides.yaml")]
        except Exception:  # noqa: BLE001 - no readable record: nothing to compare
            return
        keys = {o.split("=", 1)[0].lstrip("+~") for o in config.hydra.overrides.task}
        dropped = [o for o in original if o.split("=", 1)[0].lstrip("+~") not in keys
                   and not o.split("=", 1)[0].lstrip("+~").startswith(("hydra.", "ckpt_path", "trainer.max_epochs"))]
        if dropped:
            print(f"warning: resuming {run_dir} without settings of its original command: {' '.join(dropped)}; "
                  "the run continues with the defaults for those (repeat them to keep the run as it was)",
                  file=sys.stderr, flush=True)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(str(config.hydra.sweep.dir))
        self._check(sorted(p for p in sweep.iterdir() if p.is_dir()) if sweep.is_dir() else [], config)
        first = self._first_job(config)
        if first is not None:  # refused as that job would refuse itself, before the sweep directory is made
            from hydra.core.hydra_config import HydraConfig

            before = HydraConfig.instance().cfg  # each job sets its own; nothing else sees the first job's
            self._check_settings(first, sweep / "0")
            HydraConfig.instance().cfg = before

    @staticmethod
    def _first_job(config: DictConfig) -> DictConfig | None:
        """The config of a grid sweep's first job (Hydra's basic sweeper runs the first value of every
        swept setting first), composed as the sweeper will compose it; None for another sweeper
        (Optuna's picks its trials as it goes: each is checked inside its own folder) or when it does
        not compose here (the sweep then reports that itself)."""
        try:
            from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
            from hydra.core.global_hydra import GlobalHydra
            from hydra.core.override_parser.overrides_parser import OverridesParser

            sweeper = config.hydra.get("sweeper") or {}
            if str(sweeper.get("_target_", "")).rsplit(".", 1)[-1] != BasicSweeper.__name__:
                return None
            params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
            task = [*params, *OmegaConf.to_container(config.hydra.overrides.task, resolve=False)]
            first = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(task), None)[0][0]
            return GlobalHydra.instance().hydra.config_loader.load_sweep_config(config, first)
        except Exception:  # noqa: BLE001 - judged by the jobs themselves
            log.debug("the sweep's first job not composed before the sweep directory exists", exc_info=True)
            return None

    @staticmethod
    def _check(dirs: list[Path], config: DictConfig) -> None:
        import sys

        from clm_torch.train import RunDirectoryError, check_run_dir, resumes

        can_resume = RunDirGuard._can_resume(config)  # clm-pipeline and clm-evaluate never continue a run
        try:
            for d in dirs:
                check_run_dir(d.resolve(), resuming=can_resume and resumes(config, d), can_resume=can_resume)
        except RunDirectoryError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)
