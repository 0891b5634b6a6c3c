"""Every config group and every experiment composes and instantiates."""

from __future__ import annotations

from pathlib import Path

import hydra
import lightning as L
import pytest
from omegaconf import OmegaConf

from tests.conftest import REPO

GROUPS = ["trainer", "logger", "callbacks", "debug", "data", "model"]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (REPO / "configs" / group).glob("*.yaml"))


EXPERIMENTS = [e for e in _options("experiment") if not e.startswith("pipeline_")]
PIPELINE_EXPERIMENTS = [e for e in _options("experiment") if e.startswith("pipeline_")]


@pytest.mark.parametrize("experiment", PIPELINE_EXPERIMENTS)
def test_pipeline_experiment_composes(make_cfg, experiment: str) -> None:
    from clm_torch.pipeline import check_pipeline_settings

    cfg = make_cfg(f"experiment={experiment}", "data.path=events.csv", config_name="pipeline.yaml")
    check_pipeline_settings(cfg)
    assert cfg.data.kind in ("synthetic", "events")
    for key in ("models", "value", "stages", "actions", "segments"):
        OmegaConf.to_container(cfg[key], resolve=True)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes(make_cfg, experiment: str) -> None:
    from clm_torch.train import check_model_data, check_settings

    cfg = make_cfg(f"experiment={experiment}")
    check_settings(cfg)  # the settings checks accept every recipe
    check_model_data(cfg)
    assert cfg.model._target_.startswith("clm_torch.models.")
    assert cfg.monitor.startswith("val/")
    assert cfg.monitor_mode in ("min", "max")
    for key in ("data", "model", "trainer", "callbacks", "logger", "paths"):
        if cfg.get(key) is not None:
            OmegaConf.to_container(cfg[key], resolve=True)  # every interpolation resolves


@pytest.mark.parametrize("search", _options("hparams_search"))
def test_every_value_a_search_can_try_passes_the_settings_checks(make_cfg, search: str) -> None:
    """The settings checks of clm-train (and the model/data pairing) accept each experiment and every
    value its Optuna search can sample (both ends of each interval, each choice): a check stricter than
    the model would refuse trials of a sweep."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep

    from clm_torch.train import check_model_data, check_settings

    base = make_cfg(f"hparams_search={search}")
    check_settings(base)
    check_model_data(base)
    parser = OverridesParser.create()
    tried = 0
    for key, spec in base.hydra.sweeper.params.items():
        sweep = parser.parse_override(f"{key}={spec}").value()
        if isinstance(sweep, ChoiceSweep):
            values = list(sweep.list)
        else:
            assert isinstance(sweep, IntervalSweep), (key, spec)
            values = [sweep.start, sweep.end - (1 if isinstance(sweep.end, int) else 1e-9)]
        for v in values:
            text = str(v).replace(" ", "") if isinstance(v, list) else str(v).lower() if isinstance(v, bool) else v
            cfg = make_cfg(f"hparams_search={search}", f"{key}={text}")
            check_settings(cfg)
            check_model_data(cfg)
            tried += 1
    assert tried >= 6


@pytest.mark.parametrize("trainer", _options("trainer"))
def test_trainer_configs_compose(make_cfg, trainer: str) -> None:
    cfg = make_cfg(f"trainer={trainer}")
    assert cfg.trainer.precision == "32-true"
    if trainer in ("cpu", "default", "ddp_sim"):  # buildable on this machine
        t = hydra.utils.instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
        assert isinstance(t, L.Trainer)


@pytest.mark.parametrize("group", ["logger", "callbacks", "debug"])
def test_group_options_instantiate(make_cfg, group: str) -> None:
    for option in _options(group):
        cfg = make_cfg(f"{group}={option}")
        section = cfg.get(group) if group != "debug" else cfg.get("trainer")
        if group in ("logger", "callbacks") and section:
            for _, c in section.items():
                if c is not None and "_target_" in c:
                    hydra.utils.instantiate(c)


def test_every_yaml_default_is_commented() -> None:
    """Each key with a scalar value in configs/ carries a comment explaining it."""
    bad = []
    for path in (REPO / "configs").rglob("*.yaml"):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            s = line.strip()
            if not s or s.startswith("#") or s.startswith("- ") or s.startswith("_target_") or s.endswith(":"):
                continue
            if ":" in s and "#" not in s and not s.startswith("{"):
                bad.append(f"{path.relative_to(REPO)}:{i}: {s}")
    assert not bad, "uncommented defaults:\n" + "\n".join(bad)


def test_model_precision_default_is_fp32(make_cfg) -> None:
    cfg = make_cfg()
    assert cfg.trainer.precision == "32-true"
    assert cfg.trainer.accelerator == "cpu"


@pytest.mark.parametrize("data", ["csv", "parquet", "parquet_shards", "telco", "synthetic", "events", "synthetic_events"])
def test_the_settings_that_messages_and_readme_name_are_in_every_table_config(make_cfg, data: str) -> None:
    """`data.encoder.positive_label=<label>` (named by the target warning) and `data.clean.check_id_case`
    are overridable without Hydra's leading '+', and reach the DataModule."""
    cfg = make_cfg(f"data={data}", "data.encoder.positive_label=Yes", "data.clean.check_id_case=false",
                   *(["data.path=x"] if data in ("csv", "parquet", "parquet_shards", "events") else []))
    assert cfg.data.encoder.positive_label == "Yes" and cfg.data.clean.check_id_case is False
    if data in ("synthetic", "telco"):  # built without reading data: the keys land in the DataModule
        dm = hydra.utils.instantiate(cfg.data)
        assert dm.encoder_kwargs["positive_label"] == "Yes" and dm.clean_kwargs["check_id_case"] is False


@pytest.mark.parametrize("config_name", ["train.yaml", "pipeline.yaml", "evaluate.yaml"])
def test_a_local_override_file_reaches_the_top_level(tmp_path, config_name: str) -> None:
    """configs/local/default.yaml (git-ignored, the README's place for a machine's paths) is applied at
    the top level, after the experiment and before the command line; it used to land under a key
    `local:` that nothing reads, without a word."""
    import shutil

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from clm_torch.train import CONFIG_DIR

    conf = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, conf, ignore=shutil.ignore_patterns("local"))
    (conf / "local").mkdir()
    (conf / "local" / "default.yaml").write_text("paths:\n  log_dir: /data/clm_logs\nseed: 7\n")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name)
        assert cfg.paths.log_dir == "/data/clm_logs" and cfg.seed == 7 and "local" not in cfg
        assert compose(config_name, overrides=["seed=3"]).seed == 3  # the command line wins
    GlobalHydra.instance().clear()


def test_compose_config_puts_the_run_where_the_command_line_would(tmp_path, monkeypatch) -> None:
    """compose_config (notebooks: "the same overrides as the command line") wrote every run to
    ./logs/<task>/runs/<stamp>, whatever paths.log_dir (an override or configs/local) or hydra.run.dir said."""
    from clm_torch.config import compose_config

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CLM_ROOT", raising=False)
    cfg = compose_config([f"paths.log_dir={tmp_path / 'elsewhere'}", "experiment=churn_telco"])
    out = Path(cfg.paths.output_dir)
    assert out.parent == tmp_path / "elsewhere" / "churn_telco" / "runs" and cfg.hydra.runtime.output_dir == str(out)
    assert compose_config([f"hydra.run.dir={tmp_path / 'my_run'}"]).paths.output_dir == str(tmp_path / "my_run")
    assert Path(compose_config([]).paths.output_dir).parent == tmp_path / "logs" / "train" / "runs"  # the default
    assert Path(compose_config([], output_dir="given").paths.output_dir) == tmp_path / "given"
