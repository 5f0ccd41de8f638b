"""The pages say what the model learnt from: the sidebar's model box on every page, and Explain's warning for an
upload unlike the demo run's synthetic cells (issue 12.5)."""
from __future__ import annotations

import io

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from bmteach import settings
from bmteach.storage import DEMO_RUN
from bmteach.ui import SYNTHETIC_ON_REAL
from helpers import make_tiny_dataset

TIMEOUT = 180
EXPLAIN = str(DEMO_RUN.parent.parent / "pages" / "3_Explain.py")
ATLAS = str(DEMO_RUN.parent.parent / "pages" / "1_Atlas.py")


@pytest.fixture
def real_like(tmp_path, monkeypatch, fresh_home):
    """A data set that is not synthetic (no synth.json) and the demo run, trained on synthetic cells."""
    data = make_tiny_dataset(tmp_path / "cells", per_class=3, size=64)
    monkeypatch.setenv(settings.DATA_ENV, str(data))
    monkeypatch.setenv(settings.RUN_ENV, str(DEMO_RUN))
    monkeypatch.delenv(settings.SECRET_ENV, raising=False)
    return data


def _texts(at: AppTest) -> str:
    kinds = ("markdown", "caption", "info", "error", "warning", "success")
    return "\n".join(str(e.value) for kind in kinds for e in getattr(at, kind))


def _sidebar_texts(at: AppTest) -> str:
    return "\n".join(str(e.value) for kind in ("caption", "warning") for e in getattr(at.sidebar, kind))


def test_model_box_says_what_the_run_learnt_from_and_warns_on_real_data(real_like):
    at = AppTest.from_file(ATLAS, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    side = _sidebar_texts(at)
    assert "Trained on 2,100 synthetic cells (the built-in set)." in side
    assert SYNTHETIC_ON_REAL in side


def test_explain_warns_for_an_upload_unlike_the_training_cells(real_like):
    at = AppTest.from_file(EXPLAIN, default_timeout=TIMEOUT)
    at.run()
    at.radio(key="explain_source").set_value("Upload your own").run()
    buf = io.BytesIO()
    Image.new("RGB", (250, 250), (128, 128, 128)).save(buf, "PNG")
    at.file_uploader(key="explain_upload").set_value(("grey.png", buf.getvalue(), "image/png")).run()
    assert not at.exception, [e.value for e in at.exception]
    text = _texts(at)
    assert "This image is unlike the synthetic cells this model learnt from; its answer is a guess." in text
    assert SYNTHETIC_ON_REAL in text
