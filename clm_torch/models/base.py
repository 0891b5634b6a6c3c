"""What every clm_torch LightningModule shares.

* Fitted preprocessing travels inside the checkpoint under ``checkpoint["clm_preprocessing"]``
  (tensors plus primitives), so ``Model.load_from_checkpoint(path)`` can score raw DataFrames.
* ``monitor`` / ``monitor_mode`` name the validation metric that checkpointing, early stopping
  and sweeps optimise.
* ``data_kind`` / ``target_type`` say what data the model trains on (``table`` or ``interactions``;
  a ``binary`` or ``continuous`` target, or None when it needs none), so that a model paired with
  data it cannot use is refused in one line before anything is loaded.
* A non-finite loss either raises (naming the step) or skips the batch, per ``nan_policy``.
* ``train/loss`` (and any other training term) is summed in tensors during the epoch and logged once at
  its end (:meth:`CLMModule.add_train_terms`), not with a ``self.log`` per step.
* Every checkpoint holds each rank's random-number state (``checkpoint["clm_rng"]``,
  :mod:`clm_torch.utils.rng`); a resumed fit restores it before its first step, so that it draws what
  the uninterrupted run would have drawn.
"""

from __future__ import annotations

import inspect
import logging
import math
from typing import Any

import lightning as L
import pandas as pd
import torch
from torch.optim.lr_scheduler import LambdaLR

from clm_torch.utils.rng import RNG_KEY, rng_state, set_rng_state

log = logging.getLogger(__name__)

PREPROCESSING_KEY = "clm_preprocessing"
MODEL_CLASS_KEY = "clm_model_class"
NAN_POLICIES = ("raise", "skip", "off")
SCHEDULERS = ("none", "cosine")


def with_article(name: str) -> str:
    """``a ChurnClassifier``, ``an InfoGapVAE``: a model class name in a sentence."""
    return f"{'an' if name[:1] in 'AEIOU' else 'a'} {name}"


class UnreadableRows:
    """Counts the rows of a frame being scored that hold no feature value the model can read (every
    column missing, or an unseen category), chunk by chunk, and warns once for the frame."""

    def __init__(self) -> None:
        self.n, self.first = 0, None

    def add(self, enc: dict[str, torch.Tensor], index: pd.Index) -> None:
        none = ~(enc["num_mask"].any(1) | enc["cat_mask"].any(1))
        if none.any():
            self.n += int(none.sum())
            self.first = index[int(none.nonzero()[0, 0])] if self.first is None else self.first

    def warn(self, source: str, total: int, what: str) -> None:
        if self.n:
            log.warning("%s: %d of %d rows have no feature value the model can read (every column missing or an "
                        "unseen category; e.g. the row with index %r): their %s rests on that alone",
                        source, self.n, total, self.first, what)


_NO_RNG_STATE = "no random-number state"  # CLMModule._resume_rng: the resumed checkpoint holds none


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf."""


class CLMModule(L.LightningModule):
    """Base class: preprocessing in checkpoints, NaN guard, AdamW + optional cosine schedule."""

    monitor: str = "val/loss"
    monitor_mode: str = "min"
    data_kind: str = "table"
    target_type: str | None = None

    def __init__(self) -> None:
        super().__init__()
        self.preprocessing: dict[str, Any] = {}
        self._train_sums: torch.Tensor | None = None
        # the random-number state of the checkpoint a fit resumes from, applied at on_train_start
        # (_NO_RNG_STATE: the checkpoint predates it)
        self._resume_rng: Any = None

    def save_hyperparameters(self, *args: Any, **kwargs: Any) -> None:
        """Lightning's, then a check of the options every model shares (a typo such as
        ``model.scheduler=linear`` would otherwise train silently without a schedule)."""
        super().save_hyperparameters(*args, frame=kwargs.pop("frame", None) or inspect.currentframe().f_back,
                                     **kwargs)
        for name, allowed in (("scheduler", SCHEDULERS), ("nan_policy", NAN_POLICIES)):
            value = self.hparams.get(name)
            if value is not None and value not in allowed:
                raise ValueError(f"model.{name} must be one of {', '.join(allowed)}, not {value!r}")

    # ------------------------------------------------------------------ loading
    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, map_location: Any = None, **kwargs: Any) -> Any:  # type: ignore[override]
        """Load a checkpoint written by clm_torch, always with ``weights_only=True``, in eval mode
        (dropout off: ready to score; ``.train()`` before fine-tuning it by hand).

        Raises:
            CheckpointError: the file is missing, truncated/corrupt, would need arbitrary code
                to unpickle, or belongs to another model class.
        """
        from clm_torch.utils.io import CheckpointClassError, CheckpointError, load_checkpoint_safely

        if kwargs.pop("weights_only", True) is not True:
            raise CheckpointError("clm_torch only loads checkpoints with weights_only=True")
        ckpt = load_checkpoint_safely(checkpoint_path)
        saved = ckpt.get(MODEL_CLASS_KEY)
        if saved is not None and saved != cls.__qualname__:
            raise CheckpointClassError(f"{checkpoint_path}: this checkpoint holds {with_article(str(saved))}, not "
                                       f"{with_article(cls.__qualname__)}; load it with {saved}.load_from_checkpoint",
                                       saved=str(saved), expected=cls.__qualname__)
        try:
            model = super().load_from_checkpoint(checkpoint_path, map_location=map_location or "cpu",
                                                 weights_only=True, **kwargs)
        except (RuntimeError, TypeError, KeyError) as e:
            raise CheckpointError(f"{checkpoint_path}: cannot restore a {cls.__qualname__} from it: "
                                  f"{str(e).splitlines()[0]}") from None
        return model.eval()

    # ------------------------------------------------------------------ preprocessing
    def set_preprocessing(self, state: dict[str, Any]) -> None:
        """Attach fitted preprocessing (from the DataModule) so it is saved with the weights."""
        self.preprocessing = state
        self._on_preprocessing()

    def _on_preprocessing(self) -> None:
        """Hook: rebuild helpers (e.g. the FeatureEncoder) from ``self.preprocessing``."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[PREPROCESSING_KEY] = self.preprocessing
        checkpoint[MODEL_CLASS_KEY] = type(self).__qualname__
        checkpoint[RNG_KEY] = {"ranks": self._rng_states_of_all_ranks()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if checkpoint.get(PREPROCESSING_KEY):  # empty: saved before any was attached (clm_torch.runs.load_model says so)
            self.set_preprocessing(checkpoint[PREPROCESSING_KEY])
        trainer = self._trainer
        if trainer is not None and trainer.state.fn == "fit":  # a resume (not load_from_checkpoint, not test)
            self._resume_rng = checkpoint.get(RNG_KEY) or _NO_RNG_STATE

    # ------------------------------------------------------------------ random-number state
    def _rng_states_of_all_ranks(self) -> list[dict[str, Any]]:
        """Every rank's :func:`~clm_torch.utils.rng.rng_state`, in rank order (gathered under DDP: Lightning
        calls ``on_save_checkpoint`` on every rank, and rank 0 writes the file)."""
        state = rng_state(self.device)
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1 or not torch.distributed.is_initialized():
            return [state]
        states: list[Any] = [None] * trainer.world_size
        torch.distributed.all_gather_object(states, state)
        return states

    def _restore_resume_rng(self) -> None:
        """At the start of a resumed fit, this rank's random-number state from the checkpoint: the
        state the uninterrupted run had when it wrote the checkpoint, and still has when it starts
        the next epoch (the DataLoaders draw from generators of their own). Any draws since (model
        building, the sanity check) are discarded. A checkpoint without one (an older clm_torch), or
        written by another number of processes, gets one warning and the run goes on from this
        run's seed."""
        pending, self._resume_rng = getattr(self, "_resume_rng", None), None  # None: a module built without __init__
        trainer = self._trainer
        if pending is None or trainer is None:
            return
        ranks = None if isinstance(pending, str) else pending.get("ranks") or None
        if ranks is not None and len(ranks) == trainer.world_size:
            set_rng_state(ranks[trainer.global_rank], self.device)
            return
        if trainer.is_global_zero:
            why = ("was saved without the random-number state (by an older clm_torch)" if ranks is None else
                   f"holds the random-number state of {len(ranks)} processes, this run has {trainer.world_size}")
            log.warning("%s %s: the resumed run draws from seed=%s afresh, so it is not bit-identical to an "
                        "uninterrupted run", trainer.ckpt_path or "the checkpoint", why, torch.initial_seed())

    # ------------------------------------------------------------------ training helpers
    def guard_loss(self, loss: torch.Tensor, batch_idx: int) -> torch.Tensor | None:
        """Apply ``nan_policy`` to a training loss; returns None to skip the batch."""
        policy = self.hparams.get("nan_policy", "raise")
        # a DataModule whose ranks hold different numbers of rows (data=parquet_shards) weights each
        # rank's mean loss so that DDP's average over ranks is the mean over every row
        scale = getattr(getattr(self._trainer, "datamodule", None), "loss_scale", 1.0) if self._trainer else 1.0
        if scale != 1.0:
            loss = loss * scale
        if policy == "off" or torch.isfinite(loss).all():
            return loss
        msg = (f"non-finite training loss ({loss.item()}) at global step {self.global_step} "
               f"(epoch {self.current_epoch}, batch {batch_idx})")
        if policy == "skip":
            self.print(f"warning: {msg}; batch skipped (nan_policy=skip)")
            return None
        raise NonFiniteLossError(f"{msg}. Lower model.lr, check the inputs, or set model.nan_policy=skip.")

    def add_train_terms(self, terms: torch.Tensor, n: int) -> None:
        """Add one training batch's terms (1-D: ``terms[0]`` the loss, then whatever the model logs in
        :meth:`log_train_means`; each a mean over the batch's ``n`` rows) to the epoch's running sums.

        Tensor arithmetic only: no host sync, and none of the bookkeeping of a ``self.log`` per step,
        which costs about a millisecond (5-10 % of a small model's step at batch 256). A batch with a
        non-finite term is left out of the means (``nan_policy`` decides what happens to the batch).
        """
        terms = terms.detach().float().reshape(-1)
        finite = torch.isfinite(terms).all()
        step = torch.cat([torch.where(finite, terms, torch.zeros_like(terms)), finite.float()[None]]) * n
        self._train_sums = step if self._train_sums is None else self._train_sums + step

    def on_train_epoch_start(self) -> None:
        self._train_sums = None

    def on_train_start(self) -> None:
        # after a resume has restored the optimizer and scheduler, before the first epoch (and before
        # the LearningRateMonitor logs its rate at that epoch's start)
        self._sync_cosine_rates()
        self._restore_resume_rng()

    def _sync_cosine_rates(self) -> None:
        """Set each group's learning rate to what :meth:`cosine_schedule` gives for this epoch under the
        trainer's current ``max_epochs``. A resumed run with a larger ``max_epochs`` restores the rate
        its last epoch ended on (0 at the end of a finished schedule) and would train its first extra
        epoch at it; a run that was not resumed already has this rate (a no-op)."""
        trainer = self._trainer
        for config in (trainer.lr_scheduler_configs if trainer is not None else []):
            sched = config.scheduler
            if getattr(sched, "clm_cosine", False):
                for group, base, factor in zip(sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
                    group["lr"] = base * factor(sched.last_epoch)

    def on_train_epoch_end(self) -> None:
        """Log the epoch's means of the training terms, weighted by rows and summed over all ranks
        (NaN when every batch was non-finite)."""
        if self._train_sums is None:
            return
        sums = self.trainer.strategy.reduce(self._train_sums, reduce_op="sum")
        self._train_sums = None
        self.log_train_means(sums[:-1] / sums[-1])

    def log_train_means(self, means: torch.Tensor) -> None:
        """Hook: log the epoch means of the terms given to :meth:`add_train_terms` (here: the loss)."""
        self.log("train/loss", means[0], prog_bar=True, sync_dist=True)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or "embed" in name or "missing" in name or name.startswith("prior_")
             else decay).append(p)
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": hp.get("weight_decay", 0.0)},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=hp.get("lr", 1e-3),
        )
        if hp.get("scheduler", "none") == "cosine" and self.trainer is not None and self.trainer.max_epochs:
            return {"optimizer": opt, "lr_scheduler": {"scheduler": self.cosine_schedule(opt), "interval": "epoch"}}
        return opt

    def cosine_schedule(self, opt: torch.optim.Optimizer, epochs: int | None = None) -> LambdaLR:
        """Cosine decay of every group's learning rate to 0 over ``epochs`` (default: the trainer's
        ``max_epochs``, read at every step). ``CosineAnnealingLR`` would save its horizon in the
        checkpoint, so a run resumed with a larger ``max_epochs`` would climb back to the peak rate;
        this schedule's factor is not saved, only the epoch it has reached."""

        def factor(epoch: int) -> float:
            horizon = max(1, int(epochs or self.trainer.max_epochs))
            return 0.5 * (1.0 + math.cos(math.pi * epoch / horizon))

        sched = LambdaLR(opt, factor)
        sched.clm_cosine = True  # its rates follow max_epochs, also on resume (_sync_cosine_rates)
        return sched

    # ------------------------------------------------------------------ outputs
    def export_predictions(self, datamodule: Any, split: str = "test") -> pd.DataFrame:
        """Per-row predictions for a split of the DataModule (written to predictions/<split>.csv)."""
        raise NotImplementedError


class TableTargetModule(CLMModule):
    """Base of the models that learn a customer table's target column (ChurnClassifier, SpendRegressor):
    their steps, one for each stage, over ``model_step(batch) -> (loss, output)`` with the target in
    ``batch["y"]``. Each model keeps its own evaluation in :meth:`update_stage` (the stage's
    accumulators, per batch) and :meth:`_eval_epoch_end` (their metrics, per epoch)."""

    def model_step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's mean loss and the model's output for its rows."""
        raise NotImplementedError

    def update_stage(self, stage: str, batch: dict[str, torch.Tensor], output: torch.Tensor) -> None:
        """Add a ``val``/``test`` batch's output and targets to the stage's accumulators."""
        raise NotImplementedError

    def _eval_epoch_end(self, stage: str) -> None:
        """Compute, log and reset the stage's metrics."""
        raise NotImplementedError

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        loss, _ = self.model_step(batch)
        self.add_train_terms(loss, len(batch["y"]))  # logged as train/loss at the epoch's end
        return self.guard_loss(loss, batch_idx)

    def _eval_step(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        loss, output = self.model_step(batch)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, batch_size=len(batch["y"]), sync_dist=True)
        self.update_stage(stage, batch, output)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")
