"""``train(cfg)``: the one place where a Hydra config becomes objects and a run directory.

Run directory (``logs/<task_name>/runs/<timestamp>/`` by default, or ``hydra.run.dir``)::

    .hydra/config.yaml          resolved config (also config.yaml at the top)
    tensorboard/                events: scalars, hparams with hp/ metrics, config text
    checkpoints/best.ckpt       best by the model's monitor metric
    checkpoints/last.ckpt       last epoch (resume with ckpt_path=last)
    metrics.json                final val/test metrics
    predictions/test.csv        id, label, prediction for the test split
"""

from __future__ import annotations

import csv
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import pandas as pd
import torch
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard.summary import hparams as hparams_summary

from clm_torch.data.schema import DATE_FORMAT_EXPECTED, SchemaError, date_format_problem
from clm_torch.models.base import NonFiniteLossError, with_article
from clm_torch.utils.checkpointing import CheckedCheckpointIO, checkpoint_signature, reading_once
from clm_torch.utils.io import (CheckpointClassError, CheckpointError, SettingError, is_number, is_whole,
                                load_checkpoint_safely, write_csv_safe, write_json)

log = logging.getLogger(__name__)
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")


def _scalar(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu()
        return v.item() if v.numel() == 1 else v.tolist()
    return v


def instantiate_callbacks(cfg: DictConfig | None) -> list[L.Callback]:
    """Build every callback under ``cfg.callbacks`` that has a ``_target_``."""
    out = []
    for _, c in (cfg or {}).items():
        if isinstance(c, DictConfig) and "_target_" in c:
            out.append(hydra.utils.instantiate(c))
    return out


def instantiate_loggers(cfg: DictConfig | None) -> list[Logger]:
    out = []
    for _, c in (cfg or {}).items():
        if isinstance(c, DictConfig) and "_target_" in c:
            out.append(hydra.utils.instantiate(c))
    return out


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path, resume: bool = True) -> str | None:
    """``last`` → ``<output_dir>/checkpoints/last.ckpt`` (resume an interrupted run in place); a run
    directory → its ``last.ckpt`` to resume, its best (else last) checkpoint to test (``resume=False``)."""
    if ckpt_path in (None, "", "null"):
        return None
    if ckpt_path != "last" and Path(ckpt_path).is_dir():
        if not resume:
            from clm_torch.runs import resolve_checkpoint

            return str(resolve_checkpoint(ckpt_path))
        p = Path(ckpt_path) / "checkpoints" / "last.ckpt"
        if not p.exists():
            raise CheckpointError(f"{ckpt_path}: a run directory without checkpoints/last.ckpt; pass a checkpoint file")
        return str(p)
    if ckpt_path == "last":
        p = output_dir / "checkpoints" / "last.ckpt"
        if not p.exists():
            raise CheckpointError(f"{p}: ckpt_path=last but this run directory has no last.ckpt; "
                                  f"pass hydra.run.dir=<the interrupted run's directory>")
        return str(p)
    if not Path(ckpt_path).exists():
        raise CheckpointError(f"{ckpt_path}: checkpoint not found")
    return str(ckpt_path)


def check_resume_epochs(ckpt: dict[str, Any], path: str, max_epochs: Any) -> None:
    """Refuse a resume whose ``trainer.max_epochs`` lies before the checkpoint's epoch (Lightning stops
    with a MisconfigurationException traceback inside fit)."""
    epoch = ckpt.get("epoch")
    if isinstance(epoch, int) and max_epochs not in (None, -1) and epoch > int(max_epochs):
        raise CheckpointError(f"{path}: the run is at epoch {epoch} (counted from 0), past trainer.max_epochs="
                              f"{max_epochs}; pass a larger trainer.max_epochs to continue it")


# Trainer settings Lightning takes as whole numbers, and as numbers (a whole number of batches or a
# fraction of them). Lightning checks some of them only deep inside fit() (an AssertionError).
_TRAINER_INTS = ("min_epochs", "max_epochs", "min_steps", "max_steps", "num_nodes", "check_val_every_n_epoch",
                 "log_every_n_steps", "accumulate_grad_batches", "num_sanity_val_steps",
                 "reload_dataloaders_every_n_epochs")
_TRAINER_NUMBERS = ("gradient_clip_val", "val_check_interval", "limit_train_batches", "limit_val_batches",
                    "limit_test_batches", "limit_predict_batches", "overfit_batches")


_ABSENT = object()
# what Lightning's Trainer(precision=...) takes, as text (64, 32, 16 and bf16 are its aliases)
_PRECISIONS = frozenset({"64-true", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "transformer-engine",
                         "transformer-engine-float16", "64", "32", "16", "bf16"})


def is_count(v: Any) -> bool:
    return is_whole(v, 1)


def bad_setting(key: str, value: Any, want: str) -> SettingError:
    """``key=value: expected want``, the one form every settings check uses."""
    return SettingError(f"{key}={value!r}: expected {want}")


# model and data settings several models share: (test, what is expected). Checked before the data is
# read; they used to fail inside the optimizer or a layer (`model.lr=abc`, `model.hidden=64`).
_MODEL_SETTINGS: dict[str, tuple[Callable[[Any], bool], str]] = {
    **{k: (lambda v: is_number(v) and v > 0, "a number > 0") for k in ("lr", "neighbor_lr")},
    **{k: (lambda v: is_number(v) and v >= 0, "a number >= 0")
       for k in ("weight_decay", "embedding_weight_decay", "neighbor_weight_decay", "beta", "free_bits")},
    **{k: (lambda v: is_number(v) and 0 <= v < 1, "a share in [0, 1)")
       for k in ("dropout", "input_dropout", "user_dropout")},
    **{k: (lambda v: isinstance(v, (list, tuple)) and all(is_count(h) for h in v),
           "a list of layer sizes >= 1, e.g. [64,64]") for k in ("hidden", "encoder_hidden", "decoder_hidden")},
    **{k: (is_count, "a whole number >= 1")
       for k in ("k_ensemble", "d_embed", "latent_dim", "d", "n_samples", "n_frequencies")},
    "n_negatives": (lambda v: is_whole(v, 0), "a whole number >= 0 (0 = in-batch negatives only)"),
    "pos_weight": (lambda v: v == "balanced" or (is_number(v) and v > 0), "null, balanced or a number > 0"),
}


def _one_of(*allowed: Any) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, (str, int)) and not isinstance(v, bool) and v in allowed,
            "one of " + ", ".join(map(str, allowed)))


def _model_choices() -> dict[str, tuple[Callable[[Any], bool], str]]:
    """The models' named options (each key belongs to one model, or means the same in all), checked
    before the data is read as the model's constructor checks them after."""
    from clm_torch.models.base import NAN_POLICIES, SCHEDULERS
    from clm_torch.models.components.sequence import SEQUENCE_ENCODERS
    from clm_torch.models.components.vae import NUMERIC_LIKELIHOODS
    from clm_torch.models.infogap_features import FEATURE_SETS
    from clm_torch.models.recommender import COLD_PRIORS, LOSSES, TARGETS, USER_ENCODERS
    from clm_torch.utils.privacy import ID_MODES

    return {"scheduler": _one_of(*SCHEDULERS), "nan_policy": _one_of(*NAN_POLICIES),
            "calibration": _one_of("platt", "temperature", "none"), "sequence_encoder": _one_of(*SEQUENCE_ENCODERS),
            "infogap_features": _one_of(*FEATURE_SETS), "numeric_likelihood": _one_of(*NUMERIC_LIKELIHOODS),
            "projector_ids": _one_of(*ID_MODES), "user_encoder": _one_of(*USER_ENCODERS), "loss": _one_of(*LOSSES),
            "target": _one_of(*TARGETS), "loss_norm": _one_of("interaction", "user"),
            "dropout_mode": _one_of("random", "recent", "mixed", "auto"), "cold_start_prior": _one_of(*COLD_PRIORS)}


_DATA_SETTINGS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "batch_size": (is_count, "a whole number >= 1"),
    "eval_batch_size": (is_count, "null or a whole number >= 1"),
    "split_seed": (is_whole, "a whole number"),
    "num_workers": (lambda v: is_whole(v, 0), "a whole number >= 0"),
    **{k: (lambda v: is_number(v) and 0 < v < 1, "a share in (0, 1)")
       for k in ("val_size", "test_size", "val_fraction", "test_fraction")},
    # customer views of an event log (data=events, synthetic_events) and interaction logs
    "sequence_length": (lambda v: is_whole(v, 0), "a whole number >= 0 (0 = no purchase sequence)"),
    "n_last": (is_count, "a whole number >= 1"),
    "horizon_days": (lambda v: is_number(v) and v > 0, "a number of days > 0"),
    "time_features": _one_of("absolute", "relative", "both"),
    "n_neighbors": (lambda v: is_whole(v, 0), "a whole number >= 0 (0 = no item-item term)"),
    "max_labels": (is_count, "a whole number >= 1"),
    "drop_unlabelled": (lambda v: isinstance(v, bool), "true (leave out the rows without a label) or false"),
    "date_format": (lambda v: date_format_problem(v) is None, DATE_FORMAT_EXPECTED),
    # nested keys (a dotted path below data)
    "clean.clip_outliers": (lambda v: is_number(v) and v > 0, "null (off) or a number of robust sd > 0, e.g. 5"),
    "encoder.max_categories": (is_count, "a whole number >= 1"),
}


_ACCELERATORS = ("cpu", "gpu", "cuda", "auto", "mps")
_CALLBACK_SETTINGS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "monitor_mode": (lambda v: v in ("min", "max"), "min or max"),
    "callbacks.early_stopping.patience": (lambda v: is_whole(v, 0), "a whole number of validation epochs >= 0"),
    "callbacks.early_stopping.min_delta": (lambda v: is_number(v) and v >= 0, "a number >= 0"),
    "callbacks.early_stopping.mode": (lambda v: v in ("min", "max"), "min or max"),
    "callbacks.model_checkpoint.mode": (lambda v: v in ("min", "max"), "min or max"),
}


# which way the metrics the models log improve (the name after "val/", less any "@k"): a monitor
# with the other mode would keep the worst epoch as best.ckpt and stop when the metric got better
_LOWER_IS_BETTER = frozenset({"loss", "log_loss", "brier", "ece", "nll", "nll_num", "nll_cat", "kl", "rmse", "mae",
                              "impute_nrmse"})
_HIGHER_IS_BETTER = frozenset({"auroc", "ap", "spearman", "capture20", "impute_acc", "recall", "ndcg", "hit_rate",
                               "coverage"})


def _select(cfg: Any, key: str, *, skip_unresolved: bool = True) -> Any:
    """``cfg``'s value at the dotted ``key`` (an explicit null is None), or ``_ABSENT`` where it has
    none; with ``skip_unresolved`` a value whose interpolation fails is ``_ABSENT`` too (it is reported
    where it is used), else that error is raised."""
    try:
        return OmegaConf.select(cfg, key, default=_ABSENT)
    except Exception:  # noqa: BLE001 - any resolution failure of the value
        if skip_unresolved:
            return _ABSENT
        raise


def check_monitor_modes(cfg: DictConfig) -> None:
    """Refuse a monitored metric whose direction is known and contradicts its mode (``monitor`` /
    ``monitor_mode``, and the checkpoint's and early stopping's own when set apart), e.g.
    ``model_monitor=val/log_loss`` left with churn's ``max``."""
    for key, mode_key in (("monitor", "monitor_mode"),
                          ("callbacks.model_checkpoint.monitor", "callbacks.model_checkpoint.mode"),
                          ("callbacks.early_stopping.monitor", "callbacks.early_stopping.mode")):
        metric, mode = _select(cfg, key), _select(cfg, mode_key)
        if not isinstance(metric, str) or mode not in ("min", "max"):
            continue
        name = metric.rsplit("/", 1)[-1].split("@", 1)[0]
        want = "min" if name in _LOWER_IS_BETTER else "max" if name in _HIGHER_IS_BETTER else mode
        if want != mode:
            raise SettingError(f"{key}={metric} with {mode_key}={mode}: a {'lower' if want == 'min' else 'higher'} "
                               f"{metric} is better, so the worst epoch would be kept as the best checkpoint; "
                               f"add {mode_key}={want}")


def check_settings(cfg: DictConfig) -> None:
    """Refuse a ``seed``, trainer, model or data setting of the wrong type (or out of range) before
    anything is built, with the key."""
    bad = bad_setting
    check_monitor_modes(cfg)
    for group, checks in (("model", {**_MODEL_SETTINGS, **_model_choices()}), ("data", _DATA_SETTINGS)):
        node = cfg.get(group)
        if not isinstance(node, DictConfig):
            continue
        for key, (ok, want) in checks.items():
            v = _select(node, key, skip_unresolved=False)
            if v is _ABSENT:
                continue
            v = OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
            if v is not None and not ok(v):
                raise bad(f"{group}.{key}", v, want)
    data = cfg.get("data")
    if isinstance(data, DictConfig) and isinstance(data.get("csv"), DictConfig):  # data.csv.decimal=';' and the like
        from clm_torch.data.schema import SchemaError, csv_options

        try:
            path = data.get("path")
            csv_options(OmegaConf.to_container(data.csv, resolve=True), path=path if isinstance(path, str) else None)
        except SchemaError as e:
            raise SettingError(e.detail) from None
    if isinstance(data, DictConfig) and "val_size" in data and "test_size" in data:
        if data.val_size + data.test_size >= 1:
            raise SettingError(f"data.val_size={data.val_size!r} and data.test_size={data.test_size!r}: expected "
                               "shares that leave rows to train on (together below 1)")

    seed = cfg.get("seed")
    if seed is not None and not is_whole(seed):
        raise bad("seed", seed, "a whole number")
    tcfg = cfg.get("trainer") or {}
    for key in _TRAINER_INTS:
        v = tcfg.get(key)
        if v is not None and not is_whole(v):
            raise bad(f"trainer.{key}", v, "a whole number")
    for key in _TRAINER_NUMBERS:
        v = tcfg.get(key)
        if v is not None and not is_number(v):
            raise bad(f"trainer.{key}", v, "a number")
    precision = tcfg.get("precision")
    if precision is not None and str(precision) not in _PRECISIONS:
        raise bad("trainer.precision", precision, "32-true (the default), bf16-mixed, 16-mixed (a GPU), "
                  "64-true, bf16-true or 16-true")
    for key, (ok, want) in _CALLBACK_SETTINGS.items():
        v = _select(cfg, key)
        if v is not _ABSENT and v is not None and not ok(v):
            raise bad(key, v, want)
    accelerator = str(tcfg.get("accelerator") or "")
    if accelerator and accelerator not in _ACCELERATORS:
        raise bad("trainer.accelerator", accelerator, "cpu, gpu (cuda) or auto (trainer=cpu, trainer=gpu)")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise SettingError(f"trainer.accelerator={accelerator}: torch {torch.__version__} sees no CUDA GPU here; "
                           "train on the CPU (trainer=cpu), or install a CUDA build of torch (see the README)")
    fdr = tcfg.get("fast_dev_run")
    if fdr is not None and not isinstance(fdr, (bool, int)):
        raise bad("trainer.fast_dev_run", fdr, "true, false or a number of batches")
    if "train" in cfg and not cfg.get("train", True) and not cfg.get("test", True):
        raise SettingError("train=false test=false: nothing to do (train=false tests ckpt_path; clm-evaluate "
                           "scores other data)")


class RunDirectoryError(RuntimeError):
    """The run directory already holds a finished run that a new run would overwrite."""


def check_run_dir(output_dir: Path, resuming: bool, can_resume: bool = True) -> None:
    """Refuse to write a new run over a directory that already has checkpoints or metrics, its own
    or a sub-run's (a pipeline run holds ``<model>/checkpoints/``, also when it stopped half-way)."""
    if resuming:
        return
    existing = [p.name for p in (output_dir / "checkpoints", output_dir / "metrics.json") if p.exists()]
    if output_dir.is_dir():
        existing += sorted(f"{d.name}/checkpoints" for d in output_dir.iterdir()
                           if d.is_dir() and (d / "checkpoints").is_dir())
    if existing:
        raise RunDirectoryError(
            f"{output_dir}: already holds an earlier run ({', '.join(existing)}); nothing was overwritten. "
            "Choose a new hydra.run.dir" + (", or resume that run with ckpt_path=last" if can_resume else ""))


def resumes(cfg: DictConfig, output_dir: Path | None = None) -> bool:
    """Whether a command continues the run in its directory: ``clm-train ... ckpt_path=...`` that
    trains (``clm-evaluate``'s ``ckpt_path`` is the model it scores, not a run to continue). With
    ``output_dir``, only a checkpoint of that directory continues the run there (``last``, the directory
    itself or a file below it): another run's checkpoint starts a new run, which must not overwrite a
    run the directory already holds."""
    ckpt = cfg.get("ckpt_path")
    if cfg.get("task_name") == "evaluate" or not bool(cfg.get("train", True)) or ckpt in (None, "", "null"):
        return False
    if output_dir is None or str(ckpt) == "last":
        return True
    path, out = Path(str(ckpt)).resolve(), Path(output_dir).resolve()
    return path == out or out in path.parents


# The parts of a DataModule's preprocessing state that a checkpoint must share with the data it is
# tested or resumed on: how rows become model inputs, and (recommender) which pairs were trained on,
# so that another data.split_seed cannot put training pairs into the test split.
_ENCODING_KEYS = ("encoder", "user_ids", "item_ids", "target_mean", "protocol", "seen_indptr", "seen_indices")


def _same_state(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape \
            and a.dtype == b.dtype and bool(torch.equal(a, b) or (a.is_floating_point() and torch.allclose(
                a, b, rtol=0.0, atol=0.0, equal_nan=True)))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_state(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def check_checkpoint_fits(ckpt_path: str, model: L.LightningModule, resuming: bool) -> dict[str, Any]:
    """Refuse to test (``train=false``) or resume a checkpoint that does not fit the model this config
    builds: another model class, other layer shapes (e.g. a changed ``model.hidden``), or data whose
    freshly fitted preprocessing differs from the checkpoint's (another file, another split: the rows
    would be encoded differently from what the model was trained on). Returns the loaded checkpoint."""
    from clm_torch.models.base import MODEL_CLASS_KEY, PREPROCESSING_KEY

    ckpt = load_checkpoint_safely(ckpt_path)
    saved = ckpt.get(MODEL_CLASS_KEY)
    if saved is not None and saved != type(model).__qualname__:
        raise CheckpointError(f"{ckpt_path}: this checkpoint holds {with_article(saved)}, but the config builds "
                              f"{with_article(type(model).__qualname__)}; choose the experiment (or model=...) it was "
                              "trained with")
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in ckpt.get("state_dict", {}).items() if isinstance(v, torch.Tensor)}
    optional = set(getattr(model, "optional_state_keys", ()))  # an older checkpoint may lack them (filled in on load)
    bad = sorted(k for k in own.keys() | theirs.keys() if own.get(k) != theirs.get(k)
                 and not (k in optional and k not in theirs))
    if bad:
        shown = ", ".join(f"{k} ({theirs.get(k, 'absent')} in the checkpoint, {own.get(k, 'absent')} here)"
                          for k in bad[:3])
        raise CheckpointError(f"{ckpt_path}: its weights do not fit the model this config builds: {shown}"
                              f"{f' and {len(bad) - 3} more' if len(bad) > 3 else ''}; use the model settings of the "
                              "run that wrote it (its .hydra/config.yaml)")
    fitted = getattr(model, "preprocessing", None) or {}
    stored = ckpt.get(PREPROCESSING_KEY) or {}
    differ = [k for k in _ENCODING_KEYS if k in stored and k in fitted and not _same_state(stored[k], fitted[k])]
    if not differ:
        return ckpt
    what = ("resuming would go on training on rows encoded differently; resume with the data and "
            "data.split_seed of the original run") if resuming else (
            "testing here would feed the model rows encoded differently, or test it on pairs it trained on; "
            f"score other data with clm-evaluate ckpt_path={ckpt_path} data=... (it uses the checkpoint's "
            "preprocessing)")
    raise CheckpointError(f"{ckpt_path}: its preprocessing ({', '.join(differ)}) was fitted on other data (or another "
                          f"split) than this run's training split: {what}")


def check_launcher(trainer: L.Trainer, allow_relaunch: bool = True) -> None:
    """Refuse a re-launching DDP strategy (``strategy=ddp``) inside a Hydra multirun (``-m``), or
    wherever the caller says the command line is not this training run (``allow_relaunch=False``:
    ``clm-pipeline``'s model sub-runs).

    That launcher starts the extra ranks by re-running the command line, so inside a sweep every
    rank would start the whole sweep again (and inside the pipeline, the whole pipeline). Sweeps
    and sub-runs use one device per job or ``strategy=ddp_spawn``.
    """
    if type(getattr(trainer.strategy, "launcher", None)).__name__ != "_SubprocessScriptLauncher":
        return
    if not allow_relaunch:
        raise RunDirectoryError(
            "trainer.strategy=ddp re-runs the command for every extra rank, which would start the whole "
            "pipeline again; use trainer.strategy=ddp_spawn for this model's sub-run")
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise RunDirectoryError(
            "trainer.strategy=ddp re-runs the command for every extra rank and cannot run inside a Hydra "
            "multirun (-m); use trainer.strategy=ddp_spawn for sweeps, or one device per sweep job")


_DATA_HINTS = {
    "table": "a customer table (data=csv, parquet, events, synthetic or telco)",
    "interactions": "a user-item interaction log (data=interactions data.path=<file>, or data=movielens)",
}


def _choice(group: str) -> str | None:
    """The config group option chosen on the command line (``model=churn`` → ``churn``), if known."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().runtime.choices.get(group)


def _model_class(cfg: DictConfig) -> type | None:
    """The class ``cfg.model._target_`` names, or None (an unknown class is instantiate's error to report)."""
    try:
        return hydra.utils.get_class(str(cfg.model.get("_target_")))
    except Exception:  # noqa: BLE001
        return None


def _configured_data_kind(cfg_data: Any) -> str | None:
    """``table`` or ``interactions``: the ``data_kind`` of the class ``cfg_data._target_`` names, or of
    the class its factory function returns; None when unknown."""
    import typing

    try:
        obj = hydra.utils.get_object(str(cfg_data.get("_target_")))
    except Exception:  # noqa: BLE001 - an unknown target is instantiate's error to report
        return None
    kind = getattr(obj, "data_kind", None)
    if kind is None and callable(obj):
        try:
            kind = getattr(typing.get_type_hints(obj).get("return"), "data_kind", None)
        except Exception:  # noqa: BLE001 - an annotation that does not resolve: unknown
            return None
    return kind


def check_model_data(cfg: DictConfig, datamodule: Any = None) -> None:
    """Refuse a model paired with data it cannot train on, in one line and before the data is loaded:
    the recommender on a customer table, a table model on interactions (from the config alone, before
    the DataModule is built: a model's data settings may not fit the other kind's), ``model=churn``
    without a target column, ``model=spend`` on a binary target (once ``datamodule`` is built)."""
    cls = _model_class(cfg)
    need = getattr(cls, "data_kind", None)
    have = getattr(datamodule, "data_kind", None) if datamodule is not None else \
        _configured_data_kind(cfg.get("data") or {})
    if need is None or have is None:
        return
    model = f"model={_choice('model') or cls.__name__}"
    data = f"data={_choice('data') or (type(datamodule).__name__ if datamodule is not None else 'this data')}"
    if need != have:
        raise SettingError(f"{model} trains on {_DATA_HINTS[need]}, but {data} is "
                           f"{_DATA_HINTS[have].split(' (')[0]}")
    target_type = getattr(cls, "target_type", None)
    if need != "table" or target_type is None:
        return
    d = cfg.get("data") or {}
    if datamodule is not None:
        requires, have_type = getattr(datamodule, "require_target", True), getattr(datamodule, "target_type", None)
    else:  # from the config: what the DataModule will be (data=events reads its log when built)
        requires = d.get("require_target", d.get("target", "?") is not None)
        have_type = d.get("target_type") or (None if "target" not in d else
                                             "binary" if d.target in (None, "churn") else "continuous")
    example = ("data.target=future_spend with data=events or synthetic_events, or a numeric column with "
               "data.target_type=continuous" if target_type == "continuous" else "e.g. data.target=churn")
    if not requires:
        fix = ("data.require_target=true" if "require_target" in d and "target" not in d
               else f"data.target=<column> ({example})")
        raise SettingError(f"{model} needs a {target_type} target column, but {data} has none: set {fix}")
    if have_type is not None and have_type != target_type:
        target = d.get("target") if "target" in d else None
        other = "model=spend predicts a continuous target" if target_type == "binary" else \
            "model=churn predicts a binary one"
        raise SettingError(f"{model} needs a {target_type} target, but {data}'s target"
                           f"{f' {target}' if target else ''} is {have_type} ({example}; {other})")


def check_target_values(cfg: DictConfig, datamodule: Any) -> None:
    """A model with a ``target_min`` (the spend model: spend >= 0) refuses a training target that is
    never above it (nothing to learn: all zero, or all refunds) and warns about values below it,
    which its loss reads as the minimum (net refunds as no spend)."""
    cls = _model_class(cfg)
    lo = getattr(cls, "target_min", None)
    y = (getattr(datamodule, "tensors", None) or {}).get("train", {}).get("y")
    if lo is None or y is None or len(y) == 0:
        return
    data = getattr(datamodule, "data", None)
    source, column = getattr(data, "name", "data"), getattr(data, "target", None)
    if not bool((y > lo).any()):
        raise SchemaError(f"the target is never above {lo:g} in the training split ({len(y)} rows, max "
                          f"{float(y.max()):g}): {cls.__name__} has nothing to learn", source=source, column=column)
    below = int((y < lo).sum())
    if below:
        log.warning("%s, column %r: %d of %d training values are below %g (min %g); %s reads them as %g (net "
                    "refunds are no spend)", source, column, below, len(y), lo, float(y.min()), cls.__name__, lo)


def load_infogap(cfg: DictConfig) -> L.LightningModule | None:
    """The frozen InfoGapVAE named by ``model.infogap_ckpt`` (safe loading), or None."""
    path = cfg.model.get("infogap_ckpt") if "model" in cfg else None
    if path in (None, "", "null"):
        return None
    from clm_torch.models.infogap_vae import InfoGapVAE

    try:
        vae = InfoGapVAE.load_from_checkpoint(str(path), map_location="cpu")
    except CheckpointClassError as e:  # say which setting named the file
        raise CheckpointError(f"model.infogap_ckpt={path}: holds {with_article(e.saved)}, not an InfoGapVAE: pass "
                              "an InfoGapVAE checkpoint") from None
    except CheckpointError as e:
        raise CheckpointError(f"model.infogap_ckpt={path}: {str(e).removeprefix(f'{path}: ')}") from None
    vae.requires_grad_(False)
    return vae.eval()


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    """Hyperparameters as plain Python values (lists for tuples/ListConfigs)."""
    out = {}
    for k, v in d.items():
        if OmegaConf.is_config(v):
            v = OmegaConf.to_container(v, resolve=True)
        out[k] = list(v) if isinstance(v, tuple) else v
    return out


def build_model(cfg: DictConfig, datamodule: L.LightningDataModule) -> L.LightningModule:
    """Set up ``datamodule`` and instantiate ``cfg.model`` from its sizes, with its fitted
    preprocessing attached. With ``model.infogap_ckpt`` the frozen VAE's signals and imputations
    are added to every split first, and the VAE is copied into the model."""
    check_model_data(cfg, datamodule)
    vae = load_infogap(cfg)
    if vae is not None:
        from clm_torch.models.infogap_features import InfoGapTransform

        datamodule.frame_transform = InfoGapTransform(vae, impute=bool(cfg.model.get("infogap_impute", True)),
                                                      n_samples=int(cfg.model.get("infogap_samples", 8)),
                                                      features=str(cfg.model.get("infogap_features", "all")),
                                                      origin=f"model.infogap_ckpt={cfg.model.get('infogap_ckpt')}")
    datamodule.setup("fit")
    check_target_values(cfg, datamodule)
    extra = {"infogap": _plain(dict(vae.hparams))} if vae is not None else {}
    model = hydra.utils.instantiate(cfg.model, **datamodule.model_kwargs(), **extra, _convert_="all")
    model.set_preprocessing(datamodule.preprocessing_state())
    if vae is not None:
        model.attach_infogap(vae)
    return model


def build(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Instantiate datamodule, model, callbacks, loggers and trainer from ``cfg``."""
    check_model_data(cfg)
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="partial")
    model = build_model(cfg, datamodule)
    loggers = instantiate_loggers(cfg.get("logger"))
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    if not loggers:  # nothing to monitor the learning rate into
        callbacks = [c for c in callbacks if not isinstance(c, L.pytorch.callbacks.LearningRateMonitor)]
    if cfg.trainer.get("enable_checkpointing", True) is not False and \
            not any(isinstance(c, L.pytorch.callbacks.ModelCheckpoint) for c in callbacks):
        # without a checkpoint callback (callbacks=none) Lightning adds its own under the logger's folder
        # (tensorboard/checkpoints/epoch=..-step=...ckpt), where clm-evaluate and resume do not look
        callbacks.append(L.pytorch.callbacks.ModelCheckpoint(dirpath=str(output_dir / "checkpoints"), save_top_k=0,
                                                             save_last=True))
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                      plugins=[CheckedCheckpointIO()], _convert_="partial")
    return {"datamodule": datamodule, "model": model, "callbacks": callbacks, "loggers": loggers, "trainer": trainer}


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The run's config as plain dicts/lists with interpolations resolved (Hydra's own node left out)."""
    return {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
            for k, v in cfg.items() if k != "hydra"}


def log_hparams(loggers: list[Logger], cfg: DictConfig, model: L.LightningModule, metrics: dict[str, float]) -> None:
    """Hparams (flattened config) with ``hp/`` metrics, so TensorBoard's HParams tab compares runs."""
    container = resolved_config(cfg)
    flat: dict[str, Any] = {}

    def _flatten(prefix: str, d: Any) -> None:
        if isinstance(d, dict):
            for k, v in d.items():
                if k in ("hydra", "paths") or str(k).startswith("_"):
                    continue
                _flatten(f"{prefix}{k}/" if prefix or k else k, v)
        else:
            flat[prefix.rstrip("/")] = d if isinstance(d, (int, float, str, bool)) else str(d)

    _flatten("", {k: container[k] for k in ("model", "data", "trainer", "seed", "tags") if k in container})
    flat["model/params"] = sum(p.numel() for p in model.parameters())
    for lg in loggers:
        if isinstance(lg, TensorBoardLogger):
            lg.log_hyperparams(flat)  # hparams.yaml
            # the HParams tab's summaries name the hp/ metrics; their values are logged at the end.
            # No placeholder values: TensorBoard reads a run's event files in name order, and a
            # placeholder in a later-sorting file would be taken as the metric's final value.
            writer = getattr(lg.experiment, "_get_file_writer", lambda: None)()  # None off rank 0
            if writer is not None:
                for summary in hparams_summary(flat, metrics):
                    writer.add_summary(summary)
            lg.experiment.add_text("config", "```yaml\n" + OmegaConf.to_yaml(container) + "\n```", 0)
        else:
            lg.log_hyperparams(flat)


def train(cfg: DictConfig, *, allow_relaunch: bool = True) -> tuple[dict[str, float], dict[str, Any]]:
    """Train, validate and test the configured model; write the run directory.

    ``allow_relaunch=False`` refuses ``trainer.strategy=ddp`` (see :func:`check_launcher`): for
    callers whose command line is not this run, such as the pipeline's sub-runs.

    ``train=false ckpt_path=<checkpoint>`` evaluates that checkpoint into a new run directory (test
    metrics and predictions); ``ckpt_path`` with training resumes (``last``: this directory's run).

    Returns:
        (metrics, objects): final ``val/*`` and ``test/*`` metrics, and the built objects
        (datamodule, model, trainer, ...). ``metrics["optimized"]`` is the monitored value.
    """
    check_settings(cfg)
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    print(f"[clm_torch] run directory: {output_dir}", flush=True)
    fit = bool(cfg.get("train", True))
    eval_ckpt = None
    if not fit:  # evaluate a checkpoint: refuse before anything is built or written
        if cfg.get("ckpt_path") in (None, "", "null"):
            raise CheckpointError("train=false evaluates a checkpoint: pass ckpt_path=<path to a .ckpt> "
                                  "(or use clm-evaluate)")
        eval_ckpt = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir, resume=False)
    check_run_dir(output_dir, resuming=resumes(cfg, output_dir))
    csv_rows = _csv_rows_to_keep(cfg, output_dir) if fit else {}
    objects = build(cfg, output_dir)
    resume_ckpt = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir) if fit else None
    used = resume_ckpt or eval_ckpt
    # the file as read below: a hand-over to fit checks that it has not changed since
    used_as_read = checkpoint_signature(used) if used and os.path.isfile(used) else None
    used_ckpt = check_checkpoint_fits(used, objects["model"], resuming=fit) if used else None
    if resume_ckpt and used_ckpt is not None:
        check_resume_epochs(used_ckpt, resume_ckpt, cfg.trainer.get("max_epochs"))
        csv_rows = {path: _rows_up_to(rows, used_ckpt.get("global_step")) for path, rows in csv_rows.items()}
    check_launcher(objects["trainer"], allow_relaunch)
    dm, model, trainer, loggers = objects["datamodule"], objects["model"], objects["trainer"], objects["loggers"]
    t0 = time.time()
    try:
        monitor = cfg.get("monitor") or model.monitor
        hp_keys = [monitor, monitor.replace("val/", "test/")]
        log_hparams(loggers, cfg, model, {f"hp/{k.replace('/', '_')}": float("nan") for k in hp_keys})
        _restore_csv_rows(loggers, csv_rows)
        if fit:
            try:  # fit gets the checkpoint checked above
                with reading_once(trainer, resume_ckpt, used_ckpt, used_as_read):
                    trainer.fit(model, datamodule=dm, ckpt_path=resume_ckpt)
            except Exception as e:  # noqa: BLE001 - only "a monitored metric is never logged" becomes a setting error
                unlogged = _unlogged_monitor(e, trainer, cfg)
                if unlogged is None:
                    raise
                raise unlogged from None
        metrics = {k: _scalar(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        best, best_ckpt = None, None
        ckpt_cb = getattr(trainer, "checkpoint_callback", None)
        if eval_ckpt is not None:
            best, best_ckpt = eval_ckpt, used_ckpt  # loaded (and checked) above
        elif ckpt_cb is not None and getattr(ckpt_cb, "best_model_path", ""):
            best = ckpt_cb.best_model_path
            best_ckpt = load_checkpoint_safely(best)
            score, state = ckpt_cb.best_model_score, best_ckpt.get("callbacks", {}).get(ckpt_cb.state_key, {})
            if score is None:  # ddp_spawn returns the best path to this process, not the score
                score = state.get("best_model_score")
            if ckpt_cb.monitor == monitor:
                # the best epoch's val/* metrics (callback_metrics hold the last epoch's)
                metrics.update(getattr(ckpt_cb, "best_metrics", None) or state.get("best_metrics") or {})
                if score is not None:
                    metrics[monitor] = _scalar(score)
        if cfg.get("test", True):
            _sync_csv_headers(loggers)
            with reading_once(trainer, best, best_ckpt):  # test gets the best checkpoint read above
                trainer.test(model, datamodule=dm, ckpt_path=best if best else None, weights_only=True)
            metrics.update({k: _scalar(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
        if best_ckpt is not None:
            # the returned model and its predictions are the best checkpoint's (under ddp_spawn, fit and
            # test ran in other processes: this one still holds the weights of the last epoch)
            model.on_load_checkpoint(best_ckpt)
            model.load_state_dict(best_ckpt["state_dict"])
        if cfg.get("test", True):
            preds = _test_predictions(model, dm, trainer)
            if trainer.is_global_zero:
                write_csv_safe(preds, output_dir / "predictions" / "test.csv")
        metrics["train_seconds"] = round(time.time() - t0, 3)
        metrics["optimized"] = metrics.get(monitor, float("nan"))
        metrics["best_ckpt"] = str(Path(best).resolve()) if best else ""  # readable from any directory
        if trainer.is_global_zero:
            write_json(metrics, output_dir / "metrics.json")
            _sync_csv_headers(loggers)
            for lg in loggers:
                lg.log_metrics({f"hp/{k.replace('/', '_')}": float(metrics[k]) for k in hp_keys
                                if isinstance(metrics.get(k), (int, float))}, step=trainer.global_step)
            _print_summary(metrics, output_dir)
        return metrics, objects
    finally:
        for lg in loggers:
            try:
                lg.finalize("success")
            except Exception:  # noqa: BLE001 - closing must never mask the real error
                pass


def _unlogged_monitor(error: BaseException, trainer: L.Trainer, cfg: DictConfig) -> SettingError | None:
    """Lightning's error for a ``monitor`` (or ``callbacks.<name>.monitor``) the model never logs, as one line
    naming the setting and the metrics the model does log; None for any other error. EarlyStopping
    (a RuntimeError) and ModelCheckpoint (a MisconfigurationException) raise it at the end of the first
    validation, with a traceback (``monitor=val/auc`` for ``val/auroc``)."""
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    msg = str(error)
    if "not available" not in msg and "could not find the monitored key" not in msg:
        return None
    logged = sorted(k for k in trainer.callback_metrics if k.startswith("val/"))
    for cb in trainer.callbacks:
        name = getattr(cb, "monitor", None)
        if not isinstance(cb, (EarlyStopping, ModelCheckpoint)) or not name or name in trainer.callback_metrics \
                or (f"`{name}`" not in msg and f"'{name}'" not in msg):
            continue
        key = "monitor" if name == cfg.get("monitor") else next(
            (f"callbacks.{k}.monitor" for k, c in (cfg.get("callbacks") or {}).items()
             if isinstance(c, DictConfig) and c.get("monitor") == name), "monitor")
        return SettingError(f"{key}={name}: the model logs no such metric; its validation metrics are "
                            f"{', '.join(logged) or 'none'}")
    return None


def _test_predictions(model: L.LightningModule, dm: Any, trainer: L.Trainer) -> pd.DataFrame | None:
    """The test split's predictions on rank 0 (None on the other ranks). A DataModule whose ranks
    hold different rows (``rank_local``: ``data=parquet_shards``) gathers every rank's part."""
    dist = torch.distributed
    if getattr(dm, "rank_local", False):  # read only the test rows where they are not held yet
        dm.load_local(("test",))
    if getattr(dm, "rank_local", False) and dist.is_available() and dist.is_initialized() \
            and dist.get_world_size() > 1:
        parts: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
        dist.gather_object(model.export_predictions(dm, "test"), parts, dst=0)  # to rank 0 only
        return pd.concat(parts, ignore_index=True) if trainer.is_global_zero else None
    return model.export_predictions(dm, "test") if trainer.is_global_zero else None


def _csv_rows_to_keep(cfg: DictConfig, output_dir: Path) -> dict[Path, bytes]:
    """The ``metrics.csv`` files of the run being resumed (path → bytes), read before the loggers are
    built: Lightning's CSV writer deletes an existing ``metrics.csv`` in its directory when it starts."""
    if cfg.get("ckpt_path") in (None, "", "null"):
        return {}
    return {p.resolve(): p.read_bytes() for p in output_dir.rglob("metrics.csv") if p.is_file()}


def _rows_up_to(data: bytes, global_step: Any) -> bytes:
    """The rows of a ``metrics.csv`` logged up to the checkpoint a run resumes from: a run stopped
    after it had logged an epoch but before that epoch's checkpoint was written logs the epoch again,
    so its first rows are dropped (steps past ``global_step``, and the step's rows without an epoch:
    the learning rates logged at the start of the next epoch)."""
    if not isinstance(global_step, int):
        return data
    lines = data.decode("utf-8").splitlines(keepends=True)
    if not lines:
        return data
    header = next(csv.reader([lines[0]]))
    if "step" not in header:
        return data
    at_step, at_epoch = header.index("step"), header.index("epoch") if "epoch" in header else None
    kept = [lines[0]]
    for line in lines[1:]:
        row = next(csv.reader([line]), [])
        try:
            step = int(float(row[at_step]))
        except (ValueError, IndexError):
            kept.append(line)
            continue
        has_epoch = at_epoch is not None and at_epoch < len(row) and row[at_epoch] != ""
        if step < global_step or (step == global_step and has_epoch):
            kept.append(line)
    return "".join(kept).encode("utf-8")


def _restore_csv_rows(loggers: list[Logger], rows: dict[Path, bytes]) -> None:
    """Put back the rows of a resumed run's ``metrics.csv`` that the CSV writer cleared on start; new
    rows are appended after them (columns merged by :func:`_sync_csv_headers`)."""
    if not rows:
        return
    for lg in loggers:
        if isinstance(lg, CSVLogger):
            writer = lg.experiment  # created now (clearing the file) on rank 0; a no-op elsewhere
            path = _csv_path(writer)
            if path is None:  # another rank's dummy logger: rank 0 restores the file
                continue
            path = path.resolve()
            if path in rows and not path.exists():
                path.write_bytes(rows[path])
    _sync_csv_headers(loggers)


def _csv_path(writer: Any) -> Path | None:
    """The ``metrics.csv`` of a CSV logger's writer; None off rank 0, where Lightning hands out a dummy
    writer whose attributes are methods."""
    path = getattr(writer, "metrics_file_path", None) if writer is not None else None
    return Path(path) if isinstance(path, (str, os.PathLike)) else None


def _sync_csv_headers(loggers: list[Logger]) -> None:
    """Give each CSV logger of this process the columns ``metrics.csv`` already has.

    Under ``ddp_spawn`` fit and test run in worker processes, each with a copy of this process's
    logger; the copy that tests (or this process, logging the hp/ metrics) has not seen the columns
    that fit wrote, and Lightning's rewrite of the file with a wider header would fail on them."""
    for lg in loggers:
        writer = getattr(lg, "_experiment", None) if isinstance(lg, CSVLogger) else None
        path = _csv_path(writer)
        if path is None:  # not created in this process yet (creating it would clear the file), or not rank 0
            continue
        if path.is_file():
            with path.open(newline="") as f:
                header = next(csv.reader(f), [])
            writer.metrics_keys = sorted(set(writer.metrics_keys) | set(header))


def _print_summary(metrics: dict[str, Any], output_dir: Path) -> None:
    shown = {k: v for k, v in metrics.items() if isinstance(v, float) and "/" in k and not math.isnan(v)}
    print("[clm_torch] metrics: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(shown.items())), flush=True)
    # what this run wrote (no checkpoints/ with train=false, csv/ instead of tensorboard/ with logger=csv, ...)
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in output_dir.iterdir()
                   if not p.name.startswith(".") and p.suffix != ".log")
    print(f"[clm_torch] outputs in {output_dir}: {', '.join(names)}", flush=True)
    if (output_dir / "tensorboard").is_dir():
        print(f"[clm_torch] compare runs: tensorboard --logdir {output_dir.parent}", flush=True)


def check_no_missing(cfg: DictConfig) -> None:
    """Refuse settings left ``???`` in the config (e.g. ``data=csv`` without ``data.path``), naming them."""
    def walk(node: Any, prefix: str) -> Iterator[str]:  # the raw values: nothing is resolved
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in items:
            if v == "???":
                yield f"{prefix}{k}"
            else:
                yield from walk(v, f"{prefix}{k}.")

    raw = OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False)
    missing = sorted(k for k in walk(raw, "") if not k.startswith("hydra."))
    if missing:
        raise SettingError(f"no value for {', '.join(missing)}: set {'them' if len(missing) > 1 else 'it'} on the "
                           f"command line, e.g. {missing[0]}=...")


def check_before_run(cfg: DictConfig, program: str) -> None:
    """The checks of a command's settings that need no data, for the run-directory guard to run
    before Hydra creates the run directory (so that a refused command leaves no folder behind); the
    command runs them again itself (a notebook's ``train(cfg)`` has no guard). ``cfg``: the job's
    config (without the ``hydra`` node); ``program``: its config name, ``train``, ``pipeline`` or
    ``evaluate`` (its own settings, that its checkpoint exists and that ``data=`` is given; the data
    and the checkpoint's contents are judged when read)."""
    check_no_missing(cfg)
    name = program
    if name == "train":
        check_settings(cfg)
        check_model_data(cfg)
        if cfg.get("train", True) and cfg.get("ckpt_path") not in (None, "", "null"):
            # the checkpoint to resume exists (ckpt_path=last into a new run directory is the usual slip)
            resolve_ckpt_path(cfg.get("ckpt_path"), Path(cfg.paths.output_dir))
    elif name == "pipeline":
        from clm_torch.pipeline import check_pipeline_settings

        check_pipeline_settings(cfg)
    elif name == "evaluate":
        from clm_torch.evaluate import check_evaluate_settings

        check_evaluate_settings(cfg)


def _drop_resume_record() -> None:
    """A refused resume leaves no ``.hydra/resume_<stamp>/`` behind: Hydra wrote it for this command
    before the job ran (see ``RunDirGuard._keep_record``), and nothing ran. Only that folder, and only
    while it holds Hydra's own files; the refusal itself stays in the run's log file."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        sub, run_dir = hc.output_subdir, hc.runtime.output_dir
    except Exception:  # noqa: BLE001 - not a Hydra job (train() called from Python)
        return
    if not sub or not Path(str(sub)).name.startswith("resume_") or not run_dir:
        return
    record = Path(str(run_dir)) / str(sub)
    files = list(record.iterdir()) if record.is_dir() else []
    if files and all(f.is_file() and f.name in ("config.yaml", "hydra.yaml", "overrides.yaml") for f in files):
        for f in files:
            f.unlink()
        record.rmdir()


def _refused(line: str) -> None:
    """Print a command's one-line error, write it to the run's log files too (the console's handler
    already has it on screen), and exit with code 2. A refused resume's Hydra record is removed."""
    print(line, file=sys.stderr, flush=True)
    record = logging.LogRecord("clm_torch", logging.ERROR, __file__, 0, line, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
    _drop_resume_record()
    sys.exit(2)


def run_cli(fn: Any, cfg: DictConfig) -> Any:
    """Run ``fn(cfg)``; expected data/checkpoint errors, and settings left ``???`` in the config
    (e.g. ``data=csv`` without ``data.path``), exit non-zero with one clear line."""
    expected = (SchemaError, CheckpointError, RunDirectoryError, NonFiniteLossError, SettingError)
    try:
        check_no_missing(cfg)
        return fn(cfg)
    except expected as e:
        _refused(f"error: {e}")
    except hydra.errors.InstantiationException as e:
        # A data source raises its SchemaError inside hydra.utils.instantiate, which wraps it in
        # "Error in call to target ...": show the source's own message. A ValueError or TypeError
        # there is a bad setting (model.calibration=foo, an unknown model.<key>), and Lightning's
        # MisconfigurationException a trainer setting this machine cannot run (trainer=gpu without a
        # GPU): one line too.
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        cause = e.__cause__
        if not isinstance(cause, (*expected, ValueError, TypeError, MisconfigurationException)):
            raise
        hint = ""
        if isinstance(cause, MisconfigurationException) and "gpu" in str(cause).lower():
            import torch

            if not torch.cuda.is_available():
                hint = (f" (torch {torch.__version__} sees no CUDA GPU here: train on the CPU (trainer=cpu or "
                        "trainer.accelerator=cpu), or install a CUDA build of torch, see the README)")
        _refused(f"error: {cause}{hint}")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train.yaml")
def main(cfg: DictConfig) -> float | None:
    metrics, _ = run_cli(train, cfg)
    value = metrics.get("optimized")
    return float(value) if isinstance(value, (int, float)) else None


if __name__ == "__main__":
    main()
