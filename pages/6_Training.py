"""Training (instructor only): launch the paper's cross-validation as a separate process, watch it live, stop and
resume it, read its results beside the paper's and another run's, and make it the model every page uses.

Everything shown is read from the run folders (runs.run_state: lock, heartbeat, folds, log) and the queue, never
remembered by the app: a browser refresh or an app restart reattaches to running jobs and loses nothing.
"""
import time
from pathlib import Path

import streamlit as st

from bmteach import jobs, runs, settings, trainplan, ui
from bmteach.errors import UserError
from bmteach.models import MODELS
from bmteach.storage import runs_dir

REFRESH_S = 2.0
STATE_COLOURS = {"running": "blue", "queued": "violet", "finished": "green", "stopped": "orange", "crashed": "red"}

active = ui.setup_page("Training", icon="🏋️")
st.title("Training: train your own model")
st.write("Runs the paper's protocol (k-fold cross-validation; every image predicted once by the fold model that "
         "never saw it) as a separate process: it keeps training when you close this page.")
if not ui.instructor_guard("training"):
    st.stop()
jobs.ensure_supervisor()  # a queue whose supervisor died moves on again


@st.cache_data(ttl=600, show_spinner=False)
def count_images(data: str) -> int | None:
    """Images in a data set (the built-in one may not be generated yet: None)."""
    from bmteach.data import index
    from bmteach.storage import default_data_dir

    path = default_data_dir() if data == "default" else Path(data)
    try:
        return len(index(path).items) if path.is_dir() else None
    except (UserError, OSError):
        return None


def images_in(data: str) -> int | None:
    """The active data set's count comes from the app's own cached index; others are indexed here."""
    if data != "default" and active.has_data and Path(data) == Path(active.data_dir):
        try:
            return sum(ui.data_counts(active).values())
        except UserError:
            return None
    return count_images(data)


@st.cache_resource(show_spinner=False)
def gpus() -> list[str]:
    return trainplan.list_gpus()


# --- launch ----------------------------------------------------------------------------------------------------

def launch_form() -> None:
    presets = {p.label: p for p in trainplan.PRESETS}
    label = st.selectbox("Preset", ["custom", *presets], key="train_preset")
    p = presets.get(label) or trainplan.PRESETS[0]
    k = p.key if label in presets else "custom"  # each preset keeps its own widget values
    configured = None if active.data.is_default or not active.has_data else Path(active.data_dir)
    data_options = trainplan.data_choices(configured)
    default_data = next((lbl for lbl, v in data_options.items() if v != "default"), None) \
        if p.data == "configured" else None
    labels = list(data_options)
    left, mid, right = st.columns(3)
    with left:
        data_label = st.selectbox("Data set", labels, key=f"train_data_{k}",
                                  index=labels.index(default_data) if default_data in labels else 0)
        model = st.selectbox("Model", list(MODELS), index=list(MODELS).index(p.model), key=f"train_model_{k}")
        name = st.text_input("Run name", value=f"{model}-{time.strftime('%Y%m%d-%H%M')}", key=f"train_name_{k}",
                             help="A folder under BMTEACH_HOME/runs (letters, digits, '-', '_').")
    with mid:
        num_folds = st.number_input("Folds", 2, 10, p.num_folds, key=f"train_folds_{k}")
        epochs = st.number_input("Epochs", 1, 200, p.epochs, key=f"train_epochs_{k}")
        per_class = st.number_input("Images per class per epoch (0: every image once)", 0, 100_000, p.per_class,
                                    step=10, key=f"train_per_class_{k}")
    with right:
        size = st.number_input("Image size (px)", 16, 512, p.image_size, step=8, key=f"train_size_{k}")
        found = gpus()
        devices = ["cpu"] + (["cuda"] if found else [])
        device = st.selectbox("Device", devices, index=devices.index(p.device) if p.device in devices else 0,
                              key=f"train_device_{k}")
        st.caption("GPUs found: " + (", ".join(found) if found else "none (CPU only)"))
        parallel = len(found) > 1 and device == "cuda" and st.checkbox(
            "One fold per GPU, in parallel", value=True, key=f"train_parallel_{k}")
    data = data_options[data_label]
    n_images = images_in(data)
    seconds = trainplan.projected_seconds(model, device, int(size), int(num_folds), int(num_folds), int(epochs),
                                          int(per_class) or None, n_images or int(per_class) * 21)
    if parallel and seconds:
        seconds /= min(len(found), int(num_folds))
    rate = trainplan.throughput(model, device, int(size))
    basis = f" from {rate[0]:,.0f} images/s measured on {rate[1].measured}" if rate else ""
    st.info(f"Projected duration: **{trainplan.format_duration(seconds)}**{basis}. "
            f"Data set: {n_images if n_images is not None else 'not generated yet'} images.")
    if st.button("Launch", key="train_launch", type="primary"):
        try:
            out = trainplan.run_folder(name)
            if (out / runs.CONFIG).exists() or jobs.job_for(out):
                raise UserError(f"A run named {out.name} exists already: choose another name.")
            cmd = runs.train_command(out, data, model, epochs=int(epochs), per_class=int(per_class) or None,
                                     image_size=int(size), device=device, num_folds=int(num_folds),
                                     extra=("--parallel-folds",) if parallel else ())
            busy = bool(jobs.jobs())
            out.mkdir(parents=True, exist_ok=True)
            trainplan.record_launch(out, cmd, p.key if label in presets else None)
            runs.submit_training(cmd, out)
        except UserError as exc:
            st.error(str(exc))
        else:
            st.session_state["train_run"] = str(out)
            st.success(f"{out.name} is queued: it starts when the run before it ends." if busy
                       else f"{out.name} is starting.")


with st.expander("Launch a run", expanded=not any(runs_dir().glob(f"*/{runs.CONFIG}"))):
    launch_form()


# --- the runs ------------------------------------------------------------------------------------------------

def known_run_dirs() -> list[Path]:
    """Runs of this app, newest first, and queued runs not prepared yet."""
    root = runs_dir().resolve()
    folders = [p for p in root.iterdir() if p.is_dir() and (p / runs.CONFIG).is_file()]
    found = sorted(folders, key=lambda p: (p / runs.CONFIG).stat().st_mtime, reverse=True)
    for job in jobs.jobs():
        path = Path(job.run)
        if path not in found and path.parent == root:
            found.append(path)
    return found


def fold_grid(run: runs.Run, state: runs.RunState):
    rows = []
    for s in run.status():
        p = s.progress or {}
        metrics = s.metrics or {}
        rows.append({"fold": s.fold, "state": s.state, "epoch": f"{s.epoch}/{s.epochs}",
                     "progress": round(100 * s.fraction), "loss": p.get("loss", metrics.get("train_loss")),
                     "accuracy": p.get("accuracy", metrics.get("train_accuracy")),
                     "images/s": p.get("images_per_s") if s.state == "running" else None,
                     "ETA (min)": round(p["eta_s"] / 60, 1) if s.state == "running" and p.get("eta_s") else None,
                     "held-out accuracy": metrics.get("accuracy")})
    st.dataframe(rows, hide_index=True, key="train_grid",
                 column_config={"progress": st.column_config.ProgressColumn("progress", min_value=0, max_value=100,
                                                                            format="%d%%")})


def live_view(run_dir: Path, shown: str) -> None:
    state = runs.run_state(run_dir)
    if state.state != shown:  # ended (or started) since the page last ran: redraw it all, results included
        st.rerun()
    st.badge(state.state, color=STATE_COLOURS.get(state.state, "gray"))
    st.write(state.detail[:1].upper() + state.detail[1:] + ".")
    if state.state == "crashed":
        st.error(f"Crashed: {state.error}")
    buttons = st.columns(3)
    if state.active and buttons[0].button("Stop", key="train_stop"):
        runs.stop_training(run_dir)
        st.info("Stop asked: the run finishes its current step, saves it and ends (it can be resumed).")
    if state.resumable and (run_dir / runs.CONFIG).is_file() and buttons[1].button("Resume", key="train_resume"):
        try:
            runs.submit_training(runs.resume_command(run_dir), run_dir)
        except UserError as exc:
            st.error(str(exc))
        else:
            st.info("Resuming from the last checkpoints (queued behind any run in progress).")
    try:
        run = runs.open_run(run_dir) if (run_dir / runs.CONFIG).is_file() else None
    except UserError as exc:  # a damaged config.json: say so, keep the log below
        st.error(str(exc))
        run = None
    if run is not None:
        fold_grid(run, state)
        progress = runs.read_progress(run)
        if not progress.empty:
            latest = progress.sort_values("time").iloc[-1]
            a, b, c = st.columns(3)
            a.metric("Images/s", f"{latest.get('images_per_s') or 0:,.0f}")
            eta = latest.get("eta_s")
            running = state.state == "running" and isinstance(eta, (int, float)) and eta > 0
            b.metric("ETA of this fold", f"{eta / 60:.1f} min" if running else "–")
            beat = runs.read_heartbeat(run_dir) or {}
            memory = f" · {beat['gpu_memory_gib']} GiB" if beat.get("gpu_memory_gib") else ""
            c.metric("Device", f"{beat.get('device', '–')}{memory}")
            left, right = st.columns(2)
            left.caption("Training loss per fold (x: epochs)")
            left.line_chart(trainplan.curves(progress, "loss"))
            right.caption("Training accuracy per fold (x: epochs)")
            right.line_chart(trainplan.curves(progress, "accuracy"))
            held_loss, held_acc = (trainplan.curves(progress, c, held_out=True) for c in ("val_loss", "val_accuracy"))
            if not held_acc.empty:
                left.caption("Held-out loss after each epoch (a fixed sample of up to 1,000 held-out images)")
                left.line_chart(held_loss)
                right.caption("Held-out accuracy after each epoch (the same sample; it chooses nothing)")
                right.line_chart(held_acc)
    with st.expander("Log (last lines of train.log)", expanded=state.state == "crashed"):
        st.code(runs.read_log(run_dir, 3000) or "(empty)", language=None)


run_dirs = known_run_dirs()
st.header("Runs")
if not run_dirs:
    st.info("No run yet: launch one above.")
    st.stop()
names = [str(p) for p in run_dirs]
wanted = st.session_state.get("train_run") or st.query_params.get("run")
if wanted and wanted not in names:
    wanted = next((n for n in names if Path(n).name == wanted), None)
if wanted:
    st.session_state["train_run"] = wanted
else:
    st.session_state.pop("train_run", None)
picked = st.selectbox("Run", names, key="train_run", format_func=lambda n: Path(n).name)
st.query_params["run"] = Path(picked).name  # a refreshed browser comes back to this run
run_dir = Path(picked)
initial = runs.run_state(run_dir)
st.fragment(run_every=REFRESH_S if initial.active else None)(live_view)(run_dir, initial.state)

if initial.state != "finished":
    st.stop()

# --- results of a finished run -----------------------------------------------------------------------------

try:
    run = runs.open_run(run_dir)
except UserError as exc:
    st.error(str(exc))
    st.stop()
metrics = run.metrics()
st.header("Results")
if not metrics:
    st.warning("Every fold is trained but the run was not evaluated: run `python -m bmteach evaluate "
               f"{run_dir}`.")
    st.stop()
cols = st.columns(4)
for col, (label, value) in zip(cols, trainplan.overall(metrics).items()):
    col.metric(label, value or "–")
st.subheader("Per class, as in the paper's Table 1 (mean ± sd over folds)")
st.dataframe(trainplan.table1(metrics), hide_index=True, key="train_table1")
for warning in metrics.get("warnings", [])[:5]:
    st.caption(f"Note: {warning}")
confusion = run_dir / runs.CONFUSION_PNG
if confusion.is_file():
    st.subheader("Confusion matrix (rows: true class, row-normalised)")
    st.image(str(confusion), width=700)

st.subheader("Compare with another run")
others = [p for p in settings.known_runs() if p.resolve() != run_dir.resolve() and (p / runs.METRICS).is_file()]
if others:
    other = st.selectbox("Other run", [str(p) for p in others], key="train_compare",
                         format_func=lambda n: f"{Path(n).parent.name}/{Path(n).name}")
    other_run = runs.open_run(other)
    st.dataframe(trainplan.compare(metrics, other_run.metrics() or {}, run_dir.name, Path(other).name),
                 hide_index=True, key="train_compare_table")
else:
    st.caption("No other evaluated run to compare with yet.")

st.subheader("Provenance")
try:
    prov = trainplan.provenance(run_dir)
except UserError as exc:
    st.error(str(exc))
else:
    st.write({k: v for k, v in prov.items() if k != "config"})
    with st.expander("config.json"):
        st.json(prov["config"])

current = settings.active_run_dir()
if current.path.resolve() == run_dir.resolve():
    st.success("This run is the active model of every page.")
elif current.source == "env":
    st.info("BMTEACH_RUN is set for this server: it decides the active run.")
elif st.button("Make this the active run of every page", key="train_make_active"):
    try:
        settings.set_run_dir(run_dir)
    except UserError as exc:
        st.error(str(exc))
    else:
        st.success("Done: every page now uses this run.")
