"""TensorBoard: every run's hparams with hp/ metrics, its config as text, and (churn) test figures,
read back from the event files, and compared across two runs through the HParams plugin itself."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from clm_torch.callbacks import binary_test_predictions, expected_calibration_error, reliability_bins
from clm_torch.train import train
from tests.conftest import compose_cfg, messy_table

FAST = ["model.k_ensemble=2", "model.hidden=[32]", "model.d_embed=8", "trainer.max_epochs=2",
        "data.batch_size=64", "callbacks.model_summary=null"]
LRS = ("0.001", "0.003")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[Path, list[tuple[dict, Path]]]:
    """Two tiny churn runs side by side, as a sweep lays them out: <sweep>/0, <sweep>/1."""
    tmp = tmp_path_factory.mktemp("tb")
    csv = tmp / "customers.csv"
    messy_table(800).to_csv(csv, index=False)
    runs = []
    for i, lr in enumerate(LRS):
        cfg = compose_cfg(["model=churn", "data=csv", f"data.path={csv}", "data.target=churn",
                           "data.id_col=customer_id", *FAST, f"model.lr={lr}"], tmp / "sweep" / str(i))
        metrics, _ = train(cfg)
        runs.append((metrics, tmp / "sweep" / str(i)))
    return tmp / "sweep", runs


def _events(run: Path) -> EventAccumulator:
    ea = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    ea.Reload()
    return ea


def _hparams_data(ea: EventAccumulator) -> dict[str, plugin_data_pb2.HParamsPluginData]:
    return {tag: plugin_data_pb2.HParamsPluginData.FromString(raw)
            for tag, raw in ea.PluginTagToContent("hparams").items()}


def test_hparams_and_hp_metrics_are_in_the_event_files(sweep) -> None:
    _, runs = sweep
    metrics, run = runs[0]
    ea = _events(run)
    data = _hparams_data(ea)
    start = next(d.session_start_info for d in data.values() if d.HasField("session_start_info"))
    hp = start.hparams
    assert hp["model/lr"].number_value == pytest.approx(0.001)
    assert hp["seed"].number_value == 42
    assert hp["data/batch_size"].number_value == 64
    assert hp["model/params"].number_value > 0
    experiment = next(d.experiment for d in data.values() if d.HasField("experiment"))
    assert {m.name.tag for m in experiment.metric_infos} == {"hp/val_auroc", "hp/test_auroc"}
    for tag, key in (("hp/val_auroc", "val/auroc"), ("hp/test_auroc", "test/auroc")):
        # one value, the final one: no placeholder that a reader could take as the last value
        (last,) = ea.Scalars(tag)
        assert math.isfinite(last.value)
        assert last.value == pytest.approx(metrics[key], abs=1e-6)
    saved = json.loads((run / "metrics.json").read_text())
    assert ea.Scalars("hp/val_auroc")[-1].value == pytest.approx(saved["optimized"], abs=1e-6)


def test_hparams_tab_compares_the_runs_of_a_sweep(sweep) -> None:
    """Ask TensorBoard's own HParams plugin what its tab would show for the sweep directory."""
    from tensorboard.backend.event_processing import data_provider
    from tensorboard.backend.event_processing import plugin_event_multiplexer as pem
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import hparams_plugin
    from werkzeug.test import Client

    root, runs = sweep
    mux = pem.EventMultiplexer()
    mux.AddRunsFromDirectory(str(root))
    mux.Reload()
    provider = data_provider.MultiplexerDataProvider(mux, str(root))
    plugin = hparams_plugin.HParamsPlugin(base_plugin.TBContext(logdir=str(root), multiplexer=mux,
                                                                data_provider=provider))
    client = Client(plugin.get_plugin_apps()["/session_groups"])
    request = {"experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                                                         "STATUS_RUNNING"],
               "colParams": [], "startIndex": 0, "sliceSize": 100}
    resp = client.post("/session_groups", data=json.dumps(request), content_type="application/json")
    assert resp.status_code == 200
    groups = {g["name"].split("/")[0]: g for g in json.loads(resp.get_data())["sessionGroups"]}
    assert sorted(groups) == ["0", "1"]
    for i, (metrics, _) in enumerate(runs):
        g = groups[str(i)]
        assert g["hparams"]["model/lr"] == pytest.approx(float(LRS[i]))
        shown = {m["name"]["tag"]: m["value"] for m in g["metricValues"]}
        assert shown["hp/val_auroc"] == pytest.approx(metrics["val/auroc"], abs=1e-6)
        assert shown["hp/test_auroc"] == pytest.approx(metrics["test/auroc"], abs=1e-6)


def test_config_is_logged_as_text(sweep) -> None:
    _, runs = sweep
    ea = _events(runs[1][1])
    assert "config/text_summary" in ea.Tags()["tensors"]
    text = ea.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "_target_: clm_torch.models.churn.ChurnClassifier" in text
    assert "lr: 0.003" in text
    assert "hydra:" not in text


def test_churn_runs_log_roc_pr_and_calibration(sweep) -> None:
    _, runs = sweep
    ea = _events(runs[0][1])
    assert {"test/roc_pr", "test/calibration"} <= set(ea.Tags()["images"])
    for tag in ("test/roc_pr", "test/calibration"):
        img = ea.Images(tag)[-1]
        assert img.width > 100 and img.height > 100 and len(img.encoded_image_string) > 1000
    assert "test/pr_curve" in ea.PluginTagToContent("pr_curves")
    preds = pd.read_csv(runs[0][1] / "predictions" / "test.csv")
    ece = ea.Scalars("test/ece")[-1].value
    assert ece == pytest.approx(expected_calibration_error(preds["prediction"].to_numpy(), preds["label"].to_numpy()),
                                abs=1e-4)


def test_reliability_bins_and_ece_by_hand() -> None:
    prob = np.array([0.05, 0.15, 0.12, 0.95, 0.85])
    y = np.array([0, 0, 1, 1, 1])
    b = reliability_bins(prob, y, n_bins=10)
    assert b["bin"].tolist() == [0, 1, 8, 9]
    assert b["count"].tolist() == [1, 2, 1, 1]
    np.testing.assert_allclose(b["mean_pred"], [0.05, 0.135, 0.85, 0.95])
    np.testing.assert_allclose(b["frac_pos"], [0.0, 0.5, 1.0, 1.0])
    # (1·0.05 + 2·|0.5 − 0.135| + 1·0.15 + 1·0.05) / 5
    assert expected_calibration_error(prob, y, n_bins=10) == pytest.approx((0.05 + 0.73 + 0.15 + 0.05) / 5)


def test_curves_are_skipped_for_non_binary_predictions() -> None:
    """A recommender's export (no label/prediction columns) or one-class labels give no curves."""
    trainer = SimpleNamespace(datamodule=object())
    rec = SimpleNamespace(export_predictions=lambda dm, split: pd.DataFrame({"user_id": [1], "recommended": ["3 4"]}))
    assert binary_test_predictions(rec, trainer) is None
    one = SimpleNamespace(export_predictions=lambda dm, split: pd.DataFrame({"label": [1, 1], "prediction": [.2, .9]}))
    assert binary_test_predictions(one, trainer) is None
    ok = SimpleNamespace(export_predictions=lambda dm, split: pd.DataFrame({"label": [0, 1], "prediction": [.2, .9]}))
    prob, y = binary_test_predictions(ok, trainer)
    assert prob.tolist() == [0.2, 0.9] and y.tolist() == [0.0, 1.0]
