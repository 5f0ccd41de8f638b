"""Planning a run: projected durations (known answers), run names that never become paths, the rate this
machine measured, Table 1 formatting, curves."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from bmteach import runs, trainplan
from bmteach.errors import UserError


def test_projection_is_images_over_the_measured_rate():
    rate, base = trainplan.throughput("resnext50", "cuda", 250)
    assert rate == base.images_per_s == 1495.0
    # paper protocol: 5 folds x 13 epochs x 21 x 25,000 images + each image predicted once at 3x speed
    seconds = trainplan.projected_seconds("resnext50", "cuda", 250, 5, 5, 13, 25_000, 171_374)
    expected = 20 + 5 * 13 * 21 * 25_000 / 1495 + 171_374 / (3 * 1495)
    assert seconds == pytest.approx(expected)
    assert trainplan.format_duration(seconds) == "about 6.4 h"
    # half the side, a quarter of the pixels: four times the rate
    assert trainplan.throughput("resnext50", "cuda", 125)[0] == pytest.approx(4 * 1495)
    assert trainplan.projected_seconds("sequential", "cuda", 128, 5, 5, 1, 10, 100) is None
    assert trainplan.format_duration(None) == "not measured for this model and device"


def test_run_names_stay_inside_the_runs_folder(fresh_home):
    assert trainplan.run_folder("my run/../../etc").parent == runs.runs_dir()
    assert trainplan.run_folder("../../x").parent == runs.runs_dir()
    with pytest.raises(UserError):
        trainplan.run_folder("///")
    with pytest.raises(UserError):
        trainplan.inside_runs(fresh_home)
    assert trainplan.inside_runs(runs.runs_dir() / "a") == (runs.runs_dir() / "a").resolve()


def test_this_machines_own_runs_give_the_rate(fresh_home):
    run = runs.runs_dir() / "r"
    (run / "fold0").mkdir(parents=True)
    (run / "fold1").mkdir()
    (run / runs.CONFIG).write_text(json.dumps({"model": "sequential", "image_size": 64}))
    (run / runs.HEARTBEAT).write_text(json.dumps({"pid": 1, "device": "cpu"}))
    for k, rate in ((0, 300.0), (1, 500.0)):
        lines = [{"images_per_s": 1.0}, {"images_per_s": rate}, {"images_per_s": 0, "phase": "done"}]
        (run / f"fold{k}" / runs.PROGRESS).write_text("".join(json.dumps(r) + "\n" for r in lines))
    rate, base = trainplan.throughput("sequential", "cpu", 128)
    assert base.images_per_s == 500.0 and base.image_size == 64 and "this machine" in base.measured
    assert rate == pytest.approx(125.0)
    assert trainplan.measured_here("sequential", "cuda") is None   # a CPU run says nothing about a GPU


def test_table1_and_overall_format_mean_and_sd():
    metrics = {"classes": {"BLA": {"strict": {"precision": 0.5, "precision_sd": 0.1, "recall": 0.25},
                                   "tolerant": {"precision": 1.0, "recall": 0.75, "recall_sd": 0.05}}},
               "overall": {"strict": {"accuracy": 0.7, "accuracy_sd": 0.02}}}
    table = trainplan.table1(metrics).set_index("class")
    assert table.loc["BLA", "strict precision"] == "0.50 ± 0.10" and table.loc["BLA", "strict recall"] == "0.25"
    assert table.loc["BLA", "tolerant recall"] == "0.75 ± 0.05" and table.loc["LYT", "strict recall"] == ""
    assert 0 < table.loc["BLA", "paper strict recall"] <= 1 and len(table) == 21
    assert trainplan.overall(metrics)["strict accuracy"] == "0.70 ± 0.02"
    both = trainplan.compare(metrics, {}, "a", "b").set_index("class")
    assert both.loc["BLA", "a strict recall"] == 0.25 and pd.isna(both.loc["BLA", "b strict recall"])


def test_curves_put_epochs_on_the_x_axis_per_fold():
    progress = pd.DataFrame([
        {"fold": 0, "epoch": 1, "step": 5, "steps_per_epoch": 10, "loss": 2.0},
        {"fold": 0, "epoch": 2, "step": 10, "steps_per_epoch": 10, "loss": 1.0},
        {"fold": 1, "epoch": 1, "step": 10, "steps_per_epoch": 10, "loss": 1.5},
        {"fold": 1, "epoch": 1, "step": 10, "steps_per_epoch": 10, "loss": 9.0, "phase": "epoch", "val_loss": 1.7},
        {"fold": 1, "epoch": 1, "step": 10, "steps_per_epoch": 10, "loss": 9.0, "phase": "done"},
    ])
    chart = trainplan.curves(progress, "loss")
    assert list(chart.columns) == ["fold 0", "fold 1"]
    assert chart.loc[0.5, "fold 0"] == 2.0 and chart.loc[2.0, "fold 0"] == 1.0 and chart.loc[1.0, "fold 1"] == 1.5
    held = trainplan.curves(progress, "val_loss", held_out=True)
    assert list(held.columns) == ["fold 1"] and held.loc[1.0, "fold 1"] == 1.7
