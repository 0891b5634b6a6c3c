"""Compose the package's Hydra configs from Python (notebooks, benchmarks, tests), as the CLI would."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")


def compose_config(overrides: Sequence[str] = (), *, config_name: str = "train.yaml",
                   output_dir: str | Path | None = None) -> DictConfig:
    """``configs/<config_name>`` composed with command-line style ``overrides``.

    With ``output_dir`` the run writes there; otherwise where the command line would put it
    (``hydra.run.dir``: a new ``logs/<task_name>/runs/<timestamp>/`` below the current directory, or
    below ``paths.log_dir`` when an override or ``configs/local/default.yaml`` sets it).

    Example::

        from clm_torch import compose_config, train
        metrics, objects = train(compose_config(["experiment=churn_telco", "trainer.max_epochs=5"]))
    """
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    if output_dir is None:
        try:  # hydra.run.dir=..., paths.log_dir=... and configs/local were ignored here
            output_dir = Path(str(cfg.hydra.run.dir))
        except Exception:  # noqa: BLE001 - a run dir that needs a running Hydra job to resolve
            import datetime

            stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
            output_dir = Path.cwd() / "logs" / str(cfg.task_name) / "runs" / stamp
    output_dir = Path(output_dir).resolve()
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.runtime.cwd = str(Path.cwd())
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.root_dir = str(Path.cwd())
        cfg.paths.log_dir = str(output_dir.parent)
        cfg.paths.data_dir = str(Path.cwd() / "data")
    return cfg
