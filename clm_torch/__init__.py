"""clm_torch: deep learning for customer lifecycle management.

Public API::

    from clm_torch import ChurnClassifier, SchemaError, train
    model = ChurnClassifier.load_from_checkpoint("logs/.../checkpoints/best.ckpt")
    p = model.predict_proba(raw_df)
    run = load_run("logs/churn_telco/runs/<stamp>")   # config, models, metrics of a run directory
"""

from clm_torch.data.schema import SchemaError
from clm_torch.models.churn import ChurnClassifier
from clm_torch.runs import Run, load_run
from clm_torch.utils.io import CheckpointError

__version__ = "0.1.0"

__all__ = ["ChurnClassifier", "CheckpointError", "Run", "SchemaError", "__version__", "load_run", "train"]


def __getattr__(name: str):  # lazy: importing clm_torch should not import hydra's app machinery
    if name == "train":
        from clm_torch.train import train

        return train
    raise AttributeError(f"module 'clm_torch' has no attribute {name!r}")
