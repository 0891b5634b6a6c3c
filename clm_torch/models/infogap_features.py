"""InfoGapVAE signals as inputs of a supervised model (``model.infogap_ckpt=<vae checkpoint>``).

A trained, frozen :class:`~clm_torch.models.infogap_vae.InfoGapVAE` turns a raw customer frame into
the same frame with

* its missing cells filled by the VAE's imputation (``impute=True``: the supervised model then sees
  the VAE's best guess instead of a bare "missing" embedding), and
* extra numeric columns (:func:`infogap_columns`): the posterior mean ``vae_z<i>`` and posterior
  std ``vae_std<i>`` of every latent dimension, the ``vae_gap_score`` and ``vae_completeness`` of
  :meth:`InfoGapVAE.information_gap`, and ``vae_n_missing``, how many of the VAE's feature cells
  were missing before imputation (the missingness pattern itself can be informative, e.g. MNAR).

The transform is row-wise and deterministic (seeded draws keyed by the row's own values, so a row's
features do not depend on the rest of the frame, its order or the batch size), so it is applied to every split by
the DataModule before the supervised model's encoder is fitted, and again by the model on raw
frames at scoring time. The VAE's weights and preprocessing are stored inside the supervised
model's checkpoint, so the VAE checkpoint file is not needed after training.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import numpy as np
import pandas as pd

from clm_torch.data.schema import SchemaError, missing_cells

log = logging.getLogger(__name__)

SUMMARY_COLUMNS = ("vae_gap_score", "vae_completeness", "vae_n_missing")


FEATURE_SETS = ("all", "summary")


def infogap_columns(latent_dim: int, features: str = "all") -> list[str]:
    """Names of the numeric columns added by :func:`infogap_frame`, in order: with ``features="all"``
    the latent means and stds and the summaries, with ``"summary"`` only the summaries."""
    if features not in FEATURE_SETS:
        raise ValueError(f"model.infogap_features must be one of {FEATURE_SETS}, not {features!r}")
    latent = [*(f"vae_z{i}" for i in range(latent_dim)), *(f"vae_std{i}" for i in range(latent_dim))]
    return [*(latent if features == "all" else []), *SUMMARY_COLUMNS]


def infogap_frame(vae: Any, df: pd.DataFrame, *, impute: bool = True, n_samples: int = 8,
                  features: str = "all", source: str = "<dataframe>") -> pd.DataFrame:
    """``df`` (not modified) with the VAE's features added (``features``: see :func:`infogap_columns`)
    and, with ``impute``, its missing cells of the VAE's feature columns filled (see the module docstring)."""
    wanted = infogap_columns(int(vae.hparams.latent_dim), features)
    was_training = vae.training
    vae.eval()
    try:
        # one tally for the three reads of the frame below (and for every frame of an enclosing block:
        # the splits of a fit, the chunks of a score call): each problem said once, with its totals
        with vae.encoder.one_warning_each():
            return _infogap_frame(vae, df, wanted, impute=impute, n_samples=n_samples, source=source)
    finally:
        vae.train(was_training)


def _infogap_frame(vae: Any, df: pd.DataFrame, wanted: list[str], *, impute: bool, n_samples: int,
                   source: str) -> pd.DataFrame:
    encoded = vae.transform(df, source=source)  # once, for the three calls below
    mu, std = vae.encode(df, return_std=True, source=source, encoded=encoded)
    gap = vae.information_gap(df, n_samples=n_samples, seed=0, source=source, encoded=encoded)
    cols = [c for c in vae.encoder.feature_columns if c in df.columns]
    out = df.copy(deep=False)
    n_missing = np.zeros(len(df), dtype=np.float64)
    for c in cols:
        n_missing += missing_cells(df[c])  # NaN, and 'n/a', '' etc. in text columns (as impute fills them)
    if impute and cols:
        filled = vae.impute(df, n_samples=n_samples, seed=0, source=source, encoded=encoded)
        for c in cols:
            out[c] = filled[c].to_numpy() if len(filled) else filled[c]
    extra = {f"vae_z{i}": mu[:, i] for i in range(mu.shape[1])}
    extra.update({f"vae_std{i}": std[:, i] for i in range(std.shape[1])})
    extra["vae_gap_score"] = gap["gap_score"].to_numpy(dtype=np.float64)
    completeness = gap["completeness"].to_numpy(dtype=np.float64)
    if len(completeness) and np.isnan(completeness).all():
        # no feature moves the posterior (a collapsed or barely trained VAE), so there is nothing to
        # be complete about; 0 = "nothing known". This wording replaces information_gap's (its rows kept).
        info = float(vae.feature_info.clamp_min(0).sum())

        def say(src: str, rows: float = 0) -> None:
            log.warning("%s: the InfoGapVAE's completeness is undefined (feature information %.4g nats in all: a "
                        "collapsed or barely trained VAE); vae_completeness is 0 for every row (%d rows in total)",
                        src, info, rows)

        vae.encoder.note(("completeness",), source, say)
        completeness = np.zeros(len(completeness))
    extra["vae_completeness"] = completeness
    extra["vae_n_missing"] = n_missing
    extra = {k: extra[k] for k in wanted}
    clash = [c for c in extra if c in df.columns]
    if clash:
        raise SchemaError(f"the table already has columns {clash} that the InfoGapVAE features would "
                          "overwrite; rename them", source=source, column=clash[0])
    return pd.concat([out, pd.DataFrame(extra, index=df.index)], axis=1)


class InfoGapTransform:
    """A picklable ``frame -> frame`` callable for :class:`~clm_torch.data.datamodules.TableDataModule`."""

    def __init__(self, vae: Any, impute: bool = True, n_samples: int = 8, features: str = "all",
                 origin: str | None = None) -> None:
        self.vae, self.impute, self.n_samples, self.features = vae, bool(impute), int(n_samples), str(features)
        self.added_numeric = infogap_columns(int(vae.hparams.latent_dim), self.features)
        self.origin = origin  # where the VAE came from (model.infogap_ckpt=...), named when its columns are absent

    def one_warning_each(self) -> contextlib.AbstractContextManager:
        """Within: the frames transformed (the splits of one fit) share one tally of the VAE's warnings
        (unseen categories, empty columns, an undefined completeness), said once each, with totals over
        all of them, when the block ends."""
        return self.vae.encoder.one_warning_each()

    def __call__(self, df: pd.DataFrame, source: str = "<dataframe>") -> pd.DataFrame:
        try:
            return infogap_frame(self.vae, df, impute=self.impute, n_samples=self.n_samples, features=self.features,
                                 source=source)
        except SchemaError as e:
            if self.origin is None or "required column" not in e.detail:
                raise
            raise SchemaError(f"{e.detail}: the InfoGapVAE of {self.origin} reads these columns; was it trained on "
                              "this data?", source=e.source, column=e.column, row=e.row) from None


__all__ = ["FEATURE_SETS", "InfoGapTransform", "SUMMARY_COLUMNS", "infogap_columns", "infogap_frame"]
