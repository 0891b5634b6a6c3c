"""clm_torch: deep learning for customer lifecycle management.

Public API::

    from clm_torch import ChurnClassifier, InfoGapVAE, EmbeddingRecommender, load_run
    model = ChurnClassifier.load_from_checkpoint("logs/.../checkpoints/best.ckpt")
    p = model.predict_proba(raw_df)
    run = load_run("logs/pipeline/runs/<stamp>")        # config, models, metrics of a run directory

    from clm_torch import compose_config, train            # train from Python as clm-train would
    metrics, objects = train(compose_config(["experiment=churn_telco"]))
"""

import warnings


def _quiet_third_party_warnings() -> None:
    """Lightning 2.6 flattens every batch with torch's LeafSpec, which torch >= 2.10 deprecates: a
    FutureWarning about Lightning's own code in the output of every run. Only that message is silenced."""
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)


_quiet_third_party_warnings()


def _rank_log_suffix() -> str:
    """``""`` in a single process and on global rank 0; ``".rank<r>"`` (``RANK``, as torchrun sets it)
    or ``".node<n>.rank<local>"`` (Lightning's launcher sets ``NODE_RANK`` and ``LOCAL_RANK``) on the
    other ranks of a DDP run, so that every rank writes a log file of its own instead of interleaving
    its lines with rank 0's (``configs/hydra/default.yaml``)."""
    import os

    if os.environ.get("RANK", "").isdigit():
        rank = int(os.environ["RANK"])
        return f".rank{rank}" if rank > 0 else ""

    def number(name: str) -> int:
        value = os.environ.get(name, "")
        return int(value) if value.isdigit() else 0

    local, node = number("LOCAL_RANK"), number("NODE_RANK")
    if node > 0:
        return f".node{node}.rank{local}"
    return f".rank{local}" if local > 0 else ""


def _register_resolvers() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("clm_rank_suffix"):
        OmegaConf.register_new_resolver("clm_rank_suffix", _rank_log_suffix)


_register_resolvers()

from clm_torch.data.schema import SchemaError
from clm_torch.models.churn import ChurnClassifier
from clm_torch.models.infogap_vae import InfoGapVAE
from clm_torch.models.recommender import EmbeddingRecommender
from clm_torch.models.spend import SpendRegressor
from clm_torch.runs import Run, latest_run, load_run
from clm_torch.train import train  # the function; `python -m clm_torch.train` still runs the CLI
from clm_torch.utils.io import CheckpointError

__version__ = "0.1.0"

__all__ = ["ChurnClassifier", "CheckpointError", "EmbeddingRecommender", "InfoGapVAE", "Run", "SchemaError",
           "SpendRegressor", "__version__", "compose_config", "latest_run", "load_run", "run_pipeline", "train"]


def __getattr__(name: str):  # lazy: the pipeline and config helpers load on first use
    if name == "compose_config":
        from clm_torch.config import compose_config

        return compose_config
    if name == "run_pipeline":
        from clm_torch.pipeline import run_pipeline

        return run_pipeline
    raise AttributeError(f"module 'clm_torch' has no attribute {name!r}")
