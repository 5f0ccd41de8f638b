"""The one Streamlit-aware module: page setup, cached loaders, widgets shared by pages, the instructor guard.

Caching rules (architecture.md): models and indexes are `st.cache_resource` (one per process, read-only, never
mutated); arrays and tables are `st.cache_data`. Every torch call sits behind a cache keyed by what it depends
on (run, image bytes, fold, target), so a rerun that only moves a slider does no torch work.
"""
from __future__ import annotations

import hashlib
import io
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import streamlit as st
from PIL import Image

from bmteach import settings as cfg
from bmteach.atlas import class_counts, page_of
from bmteach.classes import ABBRS, class_name
from bmteach.errors import UserError

APP_NAME = "bmteach"


# --- what the page is showing ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Active:
    """The data set and run this page shows, and what (if anything) is wrong with each."""
    data: cfg.Choice
    run: cfg.Choice
    synthetic: bool
    data_error: str | None = None
    run_error: str | None = None

    @property
    def data_dir(self) -> str:
        return str(self.data.path)

    @property
    def run_dir(self) -> str:
        return str(self.run.path)

    @property
    def has_data(self) -> bool:
        return self.data_error is None

    @property
    def has_run(self) -> bool:
        return self.run_error is None


def setup_page(title: str, icon: str | None = None) -> Active:
    """Every page calls this first: page config, the active data set and run, and the sidebar. The icon comes
    from PAGES (Material icons); `icon` is only a fallback for a page not listed there."""
    _leave_legacy_navigation()
    listed = next((p.icon for p in PAGES if p.title == title), None)
    st.set_page_config(page_title=f"{title} · {APP_NAME}", page_icon=listed or icon or ":material/biotech:",
                       layout="wide")
    active = resolve_active(title)
    render_sidebar(active)
    return active


def _leave_legacy_navigation() -> None:
    """Until app.py's st.navigation has run once in a server process, Streamlit serves a deep link such as
    /Explain as an old-style pages/ folder app: the page runs alone under a menu whose first entry is "app"
    (app.py itself), without sections. Seen from the page: app.py is among the registered pages. Switch the
    process to app.py's navigation and run again (sessions that started in the old mode at the same moment
    see the same sign and follow)."""
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    from bmteach.storage import REPO_ROOT

    ctx = get_script_run_ctx()
    if ctx is None:
        return
    entry = str((REPO_ROOT / "app.py").resolve())
    legacy = {h for h, p in ctx.pages_manager.get_pages().items() if str(p.get("script_path") or "") == entry}
    # a page run on its own, not through app.py; once per session (AppTest resets the mode before every run)
    if legacy and ctx.page_script_hash not in legacy and not st.session_state.get("_bmteach_navigation"):
        st.session_state["_bmteach_navigation"] = True
        PagesManager.uses_pages_directory = False
        st.rerun()


def resolve_active(title: str | None = None) -> Active:
    """Read the settings (a damaged file falls back to the defaults, with a warning) and check both paths."""
    try:
        saved = cfg.load_settings()
    except UserError as exc:
        st.warning(str(exc))
        saved = cfg.Settings()
    data, run = cfg.active_data_dir(saved), cfg.active_run_dir(saved)
    data_error = None
    try:
        if data.is_default:
            data_error = ensure_default_data(title)
        else:  # validation also steps into BM_cytomorphology_data when given its parent
            data = cfg.Choice(cfg.validate_data_dir(data.path), data.source)
    except (UserError, OSError) as exc:  # a link loop, an unreadable or read-only folder: one sentence
        data_error = error_sentence(exc)
    try:
        run_error = _run_error(run)
    except (UserError, OSError) as exc:
        run_error = error_sentence(exc)
    synthetic = data_error is None and _is_synthetic(data.path)
    return Active(data, run, synthetic, data_error, run_error)


def error_sentence(exc: BaseException) -> str:
    """The sentence for a person: a UserError already is one; an OSError names its file and the system's reason."""
    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, FileNotFoundError) and exc.filename is not None:
        return f"{exc.filename} is not there any more (moved or deleted since the page was opened?)."
    if isinstance(exc, OSError):
        where = f"{exc.filename}" if exc.filename is not None else "A file"
        return f"{where} cannot be read or written ({exc.strerror or type(exc).__name__})."
    return f"Something went wrong ({type(exc).__name__})."


def or_stop(fn, *args, **kwargs):
    """fn(*args, **kwargs), or, when it raises a UserError or an OSError (a moved file, a full disk, a bad
    checkpoint), that error as one sentence on the page and the page stops there: pages stay thin."""
    try:
        return fn(*args, **kwargs)
    except (UserError, OSError) as exc:
        st.error(error_sentence(exc))
        st.stop()


def _validation_error(check, path) -> str | None:
    try:
        check(path)
    except UserError as exc:
        return str(exc)
    return None


def _run_error(run: cfg.Choice) -> str | None:
    if run.is_default and not cfg.trained_folds(run.path):
        return ("No demo model is installed yet (models/demo): train one with `python -m bmteach train` and "
                "point the app at it, or ask the instructor.")
    return _validation_error(cfg.validate_run_dir, run.path)


def _is_synthetic(path: Path) -> bool:
    from bmteach.synth import is_synthetic
    try:
        return bool(is_synthetic(path))
    except (UserError, OSError):
        return False


def ensure_default_data(title: str | None = None) -> str | None:
    """Generate the embedded synthetic data set on first use; an error sentence or None.

    One generation per server process runs in a background thread (launch.shared_generation); every session
    that opens meanwhile shows the page title, a sentence and that generation's bar, polled twice a second,
    from its first second, instead of a blank page waiting on a lock."""
    if default_data_is_current():
        return None
    from bmteach.launch import shared_generation
    from bmteach.storage import default_data_dir

    job = shared_generation(str(default_data_dir()), run_default_generation)
    box = st.empty()
    with box.container():
        if title:
            st.title(title)
        st.markdown("**First start**: bmteach draws its built-in synthetic cells once, for everyone who opens it "
                    "now; this page opens by itself when they are ready.")
        bar = st.progress(job.fraction, text=job.sentence())
    while not job.wait(0.5):
        bar.progress(job.fraction, text=job.sentence())
    box.empty()
    return job.error


def default_data_is_current() -> bool:
    from bmteach.synth import default_dataset_is_current
    return default_dataset_is_current()


def run_default_generation(progress) -> str | None:
    """synth.ensure_default_dataset in a child process, its progress relayed; an error sentence or None."""
    from bmteach.launch import generate_default_data

    return generate_default_data(progress)


class _LazyProgress:
    """A progress(done, total) callback that only puts a bar on the page once work is reported."""

    def __init__(self, text: str):
        self.text, self.bar = text, None

    def __call__(self, done, total=None, *_, **__):
        fraction = done / total if total else float(done)
        if self.bar is None:
            self.bar = st.progress(0.0, text=self.text)
        self.bar.progress(min(max(float(fraction), 0.0), 1.0), text=self.text)

    def close(self):
        if self.bar is not None:
            self.bar.empty()


def render_sidebar(active: Active) -> None:
    with st.sidebar:
        st.markdown("**Data set**")
        if active.synthetic:
            st.badge("synthetic", color="orange", icon=":material/science:")
        st.caption(f"{_data_label(active)} · {SOURCES[active.data.source].format(cfg.DATA_ENV)}")
        if active.data_error:
            st.error(active.data_error)
        st.markdown("**Model**")
        st.caption(f"{active.run.path.name} · {SOURCES[active.run.source].format(cfg.RUN_ENV)}")
        if active.run_error:
            st.warning(active.run_error)
        else:
            learnt = trained_on(active)
            st.caption(f"Trained on {learnt.sentence}.")
            if learnt.synthetic and active.data_error is None and not active.synthetic:
                st.warning(SYNTHETIC_ON_REAL)


SOURCES = {"env": "set by {}", "setting": "instructor setting", "default": "default"}
SYNTHETIC_ON_REAL = ("This model learnt from synthetic cells only: on real cells (this data set, an upload) its "
                     "answers are unreliable guesses.")


def trained_on(active: Active):
    """What the active run was trained on (ood.TrainedOn: synthetic or real, how many), cached per run stamp."""
    return _trained_on(active.run_dir, run_stamp(active.run_dir))


@st.cache_data(max_entries=16, show_spinner=False)
def _trained_on(run_dir: str, stamp: tuple):
    from bmteach.ood import trained_on as learnt
    return learnt(run_dir)


def ood_check(active: Active, image_bytes: bytes):
    """(score, flagged, warning sentence) of one image under the active run's out-of-distribution score, or None
    when the run has none (`python -m bmteach ood RUN` fits it)."""
    from bmteach.runs import OOD
    path = Path(active.run_dir) / OOD
    stamp = path.stat().st_mtime_ns if path.is_file() else None
    return _ood_check(active.run_dir, run_stamp(active.run_dir), stamp, image_bytes) if stamp else None


@st.cache_data(max_entries=256, show_spinner=False)
def _ood_check(run_dir: str, stamp: tuple, ood_stamp, image_bytes: bytes):
    from bmteach import ood
    model = ood.load(run_dir)
    if model is None:
        return None
    with torch_lock():
        scores, flags = ood.score_images(_predictor(run_dir, stamp), model, [decode_image(image_bytes)])
    return float(scores[0]), bool(flags[0]), ood.warning(run_dir)


def _data_label(active: Active) -> str:
    return "synthetic cells (built in)" if active.data.is_default else str(active.data.path)


def require_data(active: Active) -> None:
    """Stop the page with the one-sentence reason when the data set cannot be used."""
    if active.data_error:
        st.error(active.data_error)
        st.stop()


# --- cached loaders -------------------------------------------------------------------------------------

def folder_stamp(path: str | Path) -> tuple:
    """Changes when images are added to or removed from the data set (the cache key of its index): the
    modification times of the root, its class folders and their sub-folders (the TCIA layout keeps images in
    range folders such as BLA/0001-1000/). Adding or removing a file changes the mtime of its folder."""
    root = Path(path)
    level = [root]
    stamps = []
    for depth in range(3):
        below = []
        for folder in level:
            try:
                stamps.append((str(folder.relative_to(root)), folder.stat().st_mtime_ns))
                if depth < 2:
                    below += [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
            except OSError:
                continue
        level = below
    return tuple(stamps)


def run_stamp(run_dir: str | Path) -> tuple:
    """Changes when a fold checkpoint, the manifest or the predictions change (runs.run_stamp)."""
    from bmteach.runs import run_stamp as stamp

    return stamp(run_dir)


def _mtimes(files) -> tuple:
    return tuple((str(p), p.stat().st_mtime) for p in files if p.is_file())


@st.cache_resource(show_spinner="Indexing the data set...", max_entries=4)
def _index(data_dir: str, stamp: tuple):
    from bmteach.data import index
    return index(data_dir)


def data_index(active: Active):
    """IndexResult of the active data set (shared by every session; do not mutate)."""
    return _index(active.data_dir, folder_stamp(active.data_dir))


@st.cache_data(max_entries=8)
def _counts(data_dir: str, stamp: tuple) -> dict[str, int]:
    return class_counts(_index(data_dir, stamp).items)


def data_counts(active: Active) -> dict[str, int]:
    return _counts(active.data_dir, folder_stamp(active.data_dir))


def require_counts(active: Active) -> dict[str, int]:
    """Images per class of the active data set; stops the page with one sentence when it cannot be indexed."""
    require_data(active)
    return or_stop(data_counts, active)


@st.cache_data(max_entries=64)
def _paths_of_class(data_dir: str, stamp: tuple, abbr: str) -> list[str]:
    return sorted(p for p, a in _index(data_dir, stamp).items if a == abbr)


def paths_of_class(active: Active, abbr: str) -> list[str]:
    return _paths_of_class(active.data_dir, folder_stamp(active.data_dir), abbr)


@st.cache_resource(show_spinner="Loading the model...", max_entries=2)
def _predictor(run_dir: str, stamp: tuple):
    from bmteach.infer import Predictor
    model = Predictor.from_run(run_dir, device="auto")
    fit_threads(model)
    return model


SMALL_INPUT = 160  # px: models this small answer one image faster on one CPU thread than on two


def fit_threads(model) -> None:
    """One intra-op CPU thread for a small model: one image or one map is too little work to split, and on a
    shared CPU (the server, the students' browsers, other jobs) the second thread mostly waits for the first.
    Measured with bench/bench_browser.py on 2 busy cores: a new image with its maps 0.3-0.8 s on one thread
    against 0.7-3 s on two; Grad-CAM 0.02 s against 0.2-0.7 s. Large models (ResNeXt-50) keep every thread."""
    import torch

    if str(getattr(model, "device", "cpu")).startswith("cpu") and model.image_size <= SMALL_INPUT:
        torch.set_num_threads(1)


def predictor(active: Active):
    """The active run's Predictor: one per process and run, shared read-only by every session."""
    return _predictor(active.run_dir, run_stamp(active.run_dir))


@st.cache_resource
def torch_lock() -> threading.Lock:
    """One gradient computation at a time per process. The explain functions never mutate the shared models
    (they hook a private tap), so this is not for correctness: it bounds the memory and CPU threads that a whole
    class pressing SmoothGrad at once would take, and keeps each request fast instead of all of them slow."""
    return threading.Lock()


@st.cache_data(max_entries=8)
def _run_json(run_dir: str, stamp: tuple, name: str) -> dict | None:
    import json
    path = Path(run_dir) / name
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None  # a hand-edited list or null is no evaluation either


def run_config(active: Active) -> dict | None:
    """run/config.json (what the run was trained and evaluated on), or None when it has none."""
    from bmteach.runs import CONFIG
    return _run_json(active.run_dir, _mtimes([Path(active.run_dir) / CONFIG]), CONFIG)


def run_metrics(active: Active) -> dict | None:
    """run/metrics.json (the `metrics --json` format) or None when the run has not been evaluated."""
    from bmteach.runs import METRICS
    return _run_json(active.run_dir, _mtimes([Path(active.run_dir) / METRICS]), METRICS)


@st.cache_data(max_entries=8)
def _run_manifest_counts(run_dir: str, stamp: tuple) -> dict[str, int] | None:
    import pandas as pd
    from bmteach.runs import MANIFEST
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        labels = pd.read_csv(path, usecols=["label"], dtype=str)["label"]
    except (OSError, ValueError, UnicodeDecodeError):  # a damaged manifest: the page shows no run column
        return None
    return {a: int((labels == a).sum()) for a in ABBRS}


def run_manifest_counts(active: Active) -> dict[str, int] | None:
    from bmteach.runs import MANIFEST
    return _run_manifest_counts(active.run_dir, _mtimes([Path(active.run_dir) / MANIFEST]))


@st.cache_data(max_entries=512, show_spinner=False)
def read_data_bytes(data_dir: str, relpath: str) -> bytes:
    """The bytes of one data-set image (safe_join refuses paths that leave the data folder)."""
    from bmteach.images import safe_join
    return safe_join(data_dir, relpath).read_bytes()


MAX_SIDE = 1024  # larger uploads are shrunk once: the models see 128-250 px and the page shows ~300 px


# Bounded: a decoded image is up to MAX_SIDE^2 x 3 bytes (3 MB); 32 of them cap this cache near 100 MB, shared
# by every session, so memory returns close to idle when a class's sessions close (an upload drops out of it).
@st.cache_data(max_entries=32, ttl=3600, show_spinner=False)
def decode_image(image_bytes: bytes, name: str = "The image") -> Image.Image:
    """Any odd format -> RGB (images.load_image); a bad file raises BadImageError, one sentence naming `name`."""
    from bmteach.images import load_image
    buffer = io.BytesIO(image_bytes)
    buffer.name = name  # load_image names the file in its error sentence
    image = load_image(buffer)
    if max(image.size) > MAX_SIDE:
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    return image


@st.cache_data(max_entries=2048, show_spinner=False)
def thumbnail(data_dir: str, relpath: str, side: int = 96) -> bytes | None:
    """A small JPEG of one data-set image for pickers (a few kB: a grid of them costs the browser little, and
    passing bytes spares Streamlit a PNG encoding per image per rerun); None when it cannot be read."""
    try:
        image = decode_image(read_data_bytes(data_dir, relpath), Path(relpath).name).copy()
    except (UserError, OSError):
        return None
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def image_key(image_bytes: bytes) -> str:
    return hashlib.sha256(image_bytes).hexdigest()[:16]


@st.cache_resource
def teaching_text():
    """Teaching text per class (assets/teaching.json), read once per process."""
    from bmteach.atlas import load_teaching
    return load_teaching()


# --- torch work behind caches (keys: run, stamp, image bytes, fold, target, parameters) -------------------

@dataclass(frozen=True)
class Explanation:
    """One image under the active run: which fold model answers (and why), and its probabilities, maps and
    checks, each computed once per (run, stamp, image, fold, target, parameters) and shared by all sessions.
    Pages ask this object instead of threading run, stamp, bytes and folds through every call."""
    run_dir: str
    stamp: tuple
    image_bytes: bytes = field(repr=False)
    fold: int | None          # the model of the probabilities (None: the fold models' average)
    map_fold: int             # the model whose maps are shown
    reason: str               # the sentence that says whose probabilities these are

    @property
    def key(self) -> tuple:
        """Identifies the image under this model (session-state results are stored under it)."""
        return (self.run_dir, self.stamp, image_key(self.image_bytes), self.map_fold)

    def probs(self) -> np.ndarray:
        return _predict_probs(self.run_dir, self.stamp, self.image_bytes, self.fold)

    def gradcam(self, target: int, versus: int | None = None) -> np.ndarray:
        return _gradcam_map(self.run_dir, self.stamp, self.image_bytes, self.map_fold, int(target), versus)

    def smoothgrad(self, target: int, noise: float, samples: int, progress=None) -> np.ndarray:
        return _smoothgrad_map(self.run_dir, self.stamp, self.image_bytes, self.map_fold, int(target), noise,
                               samples, progress)

    def sanity(self, target: int):
        return _sanity_check(self.run_dir, self.stamp, self.image_bytes, self.map_fold, int(target))

    def deletion(self, target: int):
        return _deletion_curve(self.run_dir, self.stamp, self.image_bytes, self.map_fold, int(target))


def explanation(active: Active, image_bytes: bytes, relpath: str | None = None) -> Explanation:
    """The Explanation of an image of the active data set (relpath) or an upload (None). Raises UserError with
    the reason when no model may answer honestly (its held-out fold is not trained yet)."""
    model = predictor(active)
    choice = model.choose_fold(relpath)
    if not choice.usable:
        raise UserError(choice.reason)
    return Explanation(active.run_dir, run_stamp(active.run_dir), image_bytes, choice.fold, choice.map_fold,
                       choice.reason)


@st.cache_data(max_entries=256, show_spinner=False)
def _predict_probs(run_dir: str, stamp: tuple, image_bytes: bytes, fold: int | None) -> np.ndarray:
    """Class probabilities (classes order) of one image: one fold's model, or the fold average for None."""
    model = _predictor(run_dir, stamp)
    return model.predict_proba([decode_image(image_bytes)], fold=fold)[0]


@st.cache_data(max_entries=128, ttl=3600, show_spinner=False)  # maps of up to 250 x 250 float32: <= 32 MB
def _gradcam_map(run_dir: str, stamp: tuple, image_bytes: bytes, fold: int, target: int,
                 versus: int | None = None) -> np.ndarray:
    """Grad-CAM (H, W) in [0, 1] at the model's input size; with `versus`, evidence for target rather than it."""
    from bmteach.explain import gradcam
    model = _predictor(run_dir, stamp)
    x = model.preprocess([decode_image(image_bytes)])
    with torch_lock():
        return gradcam(model.model(fold), x, target, versus=versus)


def _smoothgrad_map(run_dir: str, stamp: tuple, image_bytes: bytes, fold: int, target: int, noise: float,
                    samples: int, progress=None) -> np.ndarray:
    """SmoothGrad (H, W) in [0, 1]; slow, so pages run it on a button and keep the result in session state."""
    from bmteach.explain import smoothgrad
    model = _predictor(run_dir, stamp)
    x = model.preprocess([decode_image(image_bytes)])
    # small inputs (the demo's 128 px) go 25 copies per pass: fewer passes is faster on a busy CPU; large ones
    # (ResNeXt-50 at 250 px) 5 per pass, which bounds memory
    batch = min(samples, 25) if model.image_size <= 160 else 5
    with torch_lock():
        return smoothgrad(model.model(fold), x, target, noise=noise, samples=samples, batch_size=batch,
                          progress=progress)


@st.cache_data(max_entries=64, show_spinner="Comparing with a weight-randomised model...")
def _sanity_check(run_dir: str, stamp: tuple, image_bytes: bytes, fold: int, target: int):
    """Grad-CAM of the trained vs a weight-randomised model and their rank correlation (SanityResult)."""
    from bmteach import explain
    model = _predictor(run_dir, stamp)
    x = model.preprocess([decode_image(image_bytes)])
    with torch_lock():
        return explain.sanity_check(model.model(fold), x, target, method="gradcam")


@st.cache_data(max_entries=64, show_spinner="Deleting the most salient pixels step by step...")
def _deletion_curve(run_dir: str, stamp: tuple, image_bytes: bytes, fold: int, target: int):
    """Deletion curve of the Grad-CAM map beside a random-order one of the same image
    (explain.DeletionComparison: .curve, .random, .ratio; a ratio below 1 = the map beats chance)."""
    from bmteach import explain
    saliency = _gradcam_map(run_dir, stamp, image_bytes, fold, target)
    model = _predictor(run_dir, stamp)
    x = model.preprocess([decode_image(image_bytes)])
    with torch_lock():
        return explain.deletion_vs_random(model.model(fold), x, target, saliency)


@st.cache_data(max_entries=256, show_spinner=False)
def cell_mask(data_dir: str, relpath: str) -> np.ndarray | None:
    """The synthetic generator's mask of one image (0 background, >0 cell), or None when it has none."""
    from bmteach.synth import mask_path
    path = mask_path(data_dir, relpath)
    if path is None or not Path(path).is_file():
        return None
    try:
        with Image.open(path) as im:
            return np.asarray(im)
    except OSError:  # a damaged or vanished mask: the page simply shows no share inside the cell
        return None


def top_classes(probs: np.ndarray, classes: list[str], k: int = 5) -> list[tuple[str, float]]:
    """The k most probable classes, highest first (ties keep class order)."""
    order = np.argsort(-np.asarray(probs), kind="stable")[:k]
    return [(classes[i], float(probs[i])) for i in order]


# --- feature map and errors: bmteach.features / embed / explore behind caches ---------------------------

MAP_AUTO_LIMIT = 5000  # a run up to this size gets its map on first visit (~30 s on CPU); larger ones by command


@st.cache_data(max_entries=8, show_spinner=False)
def _oof(run_dir: str, stamp: tuple):
    from bmteach.runs import read_oof
    return read_oof(run_dir)


def run_oof(active: Active):
    """The active run's out-of-fold predictions (runs.read_oof), or None before any fold finished."""
    return _oof(active.run_dir, run_stamp(active.run_dir))


@st.cache_resource(max_entries=4, show_spinner=False)
def _feature_map(run_dir: str, stamp: tuple, data_dir: str, _progress=None):
    from bmteach.embed import embed_run
    return embed_run(run_dir, data_dir, progress=_progress)


def feature_map(active: Active, compute: bool = False):
    """The active run's map (bmteach.embed.Embedding): from disk, or, with compute=True, computed now with a
    progress bar (features of every image, then UMAP). None when it is not on disk and compute is False."""
    from bmteach.embed import map_is_cached
    if not compute and not map_is_cached(active.run_dir, active.data_dir):
        return None
    bar = _LazyProgress("Computing the feature map once for this run: features of every image, then UMAP...")
    try:
        return _feature_map(active.run_dir, run_stamp(active.run_dir), active.data_dir, bar)
    finally:
        bar.close()


@st.cache_resource(max_entries=4, show_spinner=False)
def _feature_table(run_dir: str, stamp: tuple, data_dir: str):
    from bmteach.features import run_features
    return run_features(run_dir, data_dir)


def feature_table(active: Active):
    """The memory-mapped features behind the map (for nearest neighbours); call after feature_map."""
    return _feature_table(active.run_dir, run_stamp(active.run_dir), active.data_dir)


@st.cache_data(max_entries=4, show_spinner=False)
def _map_table(run_dir: str, stamp: tuple, data_dir: str):
    from bmteach.explore import map_table
    emb = _feature_map(run_dir, stamp, data_dir)
    return map_table(emb.rows, emb.coords, _oof(run_dir, stamp))


def map_table(active: Active):
    """One row per mapped image: row id, path, label, fold, x, y, prediction and scores (explore.map_table)."""
    return _map_table(active.run_dir, run_stamp(active.run_dir), active.data_dir)


@st.cache_data(max_entries=4, show_spinner="Looking for possible label errors (confident learning)...")
def _label_issues(run_dir: str, stamp: tuple):
    from bmteach.explore import label_issues
    return label_issues(_oof(run_dir, stamp))


def label_issues(active: Active):
    return _label_issues(active.run_dir, run_stamp(active.run_dir))


@st.cache_data(max_entries=8, show_spinner=False)
def _class_table(run_dir: str, stamp: tuple, pairs_key: str):
    from bmteach.explore import class_table
    return class_table(_oof(run_dir, stamp))


def class_table(active: Active):
    """Per class: the run's strict/tolerant precision and recall beside the paper's Table 1."""
    return _class_table(active.run_dir, run_stamp(active.run_dir), "default")


# --- quiz: the answers database and the item pool ---------------------------------------------------------

def quiz_store():
    """The quiz database of this server (store.open_store keeps one per URL per process)."""
    from bmteach.store import open_store
    return open_store()


@st.cache_resource(show_spinner="Preparing the quiz items...", max_entries=4)
def _quiz_pool(data_dir: str, data_stamp: tuple, run_dir: str, stamp: tuple):
    from bmteach import quiz
    oof = quiz.read_predictions(run_dir)
    return None if oof is None else quiz.build_pool(oof, _index(data_dir, data_stamp).items)


def quiz_pool(active: Active):
    """Quiz items (quiz.build_pool) of the active data set and run, or None without out-of-fold predictions.
    Shared by every session: never mutate it."""
    return _quiz_pool(active.data_dir, folder_stamp(active.data_dir), active.run_dir, run_stamp(active.run_dir))


# --- widgets shared by pages ----------------------------------------------------------------------------

def class_label(abbr: str) -> str:
    return f"{abbr} · {class_name(abbr)}"


def class_picker(label: str, key: str, default: str | None = None, options=ABBRS, counts=None) -> str:
    """A selectbox of classes shown as 'MYB · Myelocyte (n)'; returns the abbreviation."""
    options = list(options)

    def fmt(a: str) -> str:
        return f"{class_label(a)} ({counts.get(a, 0)})" if counts is not None else class_label(a)

    if key in st.session_state:  # set by a click elsewhere (the tree): a default as well would be a conflict
        return st.selectbox(label, options, format_func=fmt, key=key)
    index = options.index(default) if default in options else 0
    return st.selectbox(label, options, index=index, format_func=fmt, key=key)


def image_picker(active: Active, abbr: str, key: str, per_page: int = 50) -> str | None:
    """Pick one image of a class, page by page (a class may hold 29,000 images); returns its relpath."""
    paths = paths_of_class(active, abbr)
    if not paths:
        st.info(f"The active data set has no {class_name(abbr)} images.")
        return None
    n_pages = max(1, -(-len(paths) // per_page))
    cols = st.columns([1, 3])
    # keys per class: each class keeps its own page, and a page number never outlives a shorter class
    page = cols[0].number_input(f"Page (of {n_pages})", 1, n_pages, 1, key=f"{key}_{abbr}_page")
    current = page_of(paths, page, per_page)
    return cols[1].selectbox(f"Image ({len(paths):,} in this class)", current.items,
                             format_func=lambda p: Path(p).name, key=f"{key}_{abbr}_image")


def table_height(n_rows: int) -> int:
    """Pixel height of an st.dataframe that shows n_rows without a scroll bar (header + rows + border), so a
    table of the 21 classes is seen whole."""
    return 38 + 35 * int(n_rows)


def image_caption(name: str, synthetic: bool, extra: str = "") -> str:
    """Captions always say when an image is synthetic: it must never pass for a real cell."""
    parts = [name] + (["synthetic image"] if synthetic else []) + ([extra] if extra else [])
    return " · ".join(parts)


def show_cell(image, name: str, synthetic: bool, extra: str = "", width="content") -> None:
    st.image(image, caption=image_caption(name, synthetic, extra), width=width)


def gallery(active: Active, abbr: str, key: str, per_page: int = 12, columns: int = 6) -> None:
    """A paged grid of one class's images from the active data set."""
    paths = paths_of_class(active, abbr)
    if not paths:
        st.info(f"No {class_name(abbr)} images in the active data set.")
        return
    n_pages = max(1, -(-len(paths) // per_page))
    page = st.number_input(f"Gallery page (of {n_pages})", 1, n_pages, 1, key=f"{key}_{abbr}_page")
    current = page_of(paths, page, per_page)
    cols = st.columns(columns)
    for i, relpath in enumerate(current.items):
        with cols[i % columns]:
            show_data_cell(active, relpath, width="stretch")


def show_data_cell(active: Active, relpath: str, label: str | None = None, width="content") -> None:
    """One image of the data set; a file that cannot be decoded becomes a one-line caption, not a crash."""
    name = Path(relpath).name
    try:
        image = decode_image(read_data_bytes(active.data_dir, relpath), name)
    except (UserError, OSError) as exc:
        st.caption(str(exc) if isinstance(exc, UserError) else f"{name} cannot be read.")
        return
    show_cell(image, label or name, active.synthetic, width=width)


@dataclass(frozen=True)
class PageInfo:
    file: str       # under pages/
    title: str      # the sidebar entry and the browser tab
    icon: str       # Material icons: emoji show as empty boxes on machines without an emoji font
    section: str    # Learn / Explore / Teach
    blurb: str      # one line on the home page


# The app's pages in menu order; pages not present in this checkout are left out of the menu.
PAGES = (
    PageInfo("0_Home.py", "Home", ":material/home:", "Learn", "What bmteach is and what is active"),
    PageInfo("1_Atlas.py", "Atlas", ":material/menu_book:", "Learn", "The 21 classes, their lineage and examples"),
    PageInfo("2_Quiz.py", "Quiz", ":material/quiz:", "Learn", "Test yourself against the expert and the model"),
    PageInfo("3_Explain.py", "Explain", ":material/visibility:", "Explore", "What the model looks at"),
    PageInfo("4_Feature_map.py", "Feature map", ":material/scatter_plot:", "Explore", "The map of all cells"),
    PageInfo("5_Errors.py", "Errors", ":material/rule:", "Explore", "Where the model goes wrong"),
    PageInfo("6_Training.py", "Training", ":material/model_training:", "Teach", "Train your own model"),
    PageInfo("7_Teacher.py", "Teacher", ":material/school:", "Teach", "Class results"),
)
HOME_PAGE = "0_Home.py"


def present_pages() -> dict[str, list[PageInfo]]:
    """The pages that exist in this checkout, grouped by section in menu order."""
    from bmteach.storage import REPO_ROOT
    sections: dict[str, list[PageInfo]] = {}
    for page in PAGES:
        if (REPO_ROOT / "pages" / page.file).is_file():
            sections.setdefault(page.section, []).append(page)
    return sections


def page_links() -> None:
    """A link to every other page that exists in this checkout."""
    for items in present_pages().values():
        for page in items:
            if page.file != HOME_PAGE:
                st.page_link(f"pages/{page.file}", label=f"{page.title}: {page.blurb}", icon=page.icon)


# --- instructor guard -----------------------------------------------------------------------------------

def _secrets():
    try:
        return st.secrets
    except Exception:
        return None


def instructor_guard(key: str = "instructor") -> bool:
    """True when this session proved it knows the instructor secret. Without one configured, say how to set it."""
    expected = cfg.instructor_secret(_secrets())
    if not expected:
        st.info("Instructor settings are locked until a secret is configured: put `instructor_secret = \"...\"` "
                f"in `.streamlit/secrets.toml`, or set the environment variable `{cfg.SECRET_ENV}`, then restart "
                "the app.")
        return False
    # the password field keeps its value across reruns, so the check simply runs on every rerun
    given = st.text_input("Instructor secret", type="password", key=f"{key}_secret")
    if not given:
        return False
    if not cfg.check_secret(given, expected):
        st.error("That is not the instructor secret.")
        return False
    return True
