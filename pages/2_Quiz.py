"""Quiz: you, the expert and the model. Commit, then reveal: the answer is stored before any feedback is shown.
A student joins with a class code and a pseudonym; the token in the page URL (?t=...) resumes after a refresh."""
import time
import zlib

import numpy as np
import pandas as pd
import streamlit as st

from bmteach import quiz, ui
from bmteach.classes import class_name
from bmteach.errors import UserError
from bmteach.maps import overlay
from bmteach.store import Answer

MODES = {"Practice": "practice", "Exam": "exam", "Beat the model": "beat", "Experts disagree?": "contested",
         "My results": "results"}

active = ui.setup_page("Quiz", icon="❓")
st.title("Quiz: you, the expert and the model")
ui.require_data(active)
if not active.has_run:
    st.warning(active.run_error)
    st.stop()
pool = ui.or_stop(ui.quiz_pool, active)
if pool is None or pool.empty:
    st.warning("The active model has no out-of-fold predictions for this data set yet, so there is nothing to "
               "compare your answers with: finish (or choose) a trained run first.")
    st.stop()
db = ui.or_stop(ui.quiz_store)  # a read-only home or an unreachable database server: one sentence


# --- who is answering ------------------------------------------------------------------------------------

def join_form() -> None:
    st.write("Join your class with the code your teacher gave you and a pseudonym. Your place is kept in this "
             "page's link: bookmark it to continue later, on this or another device.")
    with st.form("join"):
        code = st.text_input("Class code", key="join_code")
        name = st.text_input("Pseudonym", max_chars=40, key="join_name")
        if st.form_submit_button("Join"):
            try:
                student = db.join(code, name)
            except UserError as exc:
                st.error(str(exc))
                return
            st.query_params["t"] = student.token
            st.rerun()


student = db.student(st.query_params.get("t"))
if student is None:
    if st.query_params.get("t"):
        st.warning("This quiz link is not valid any more (the class may have been erased): join again.")
    join_form()
    st.stop()

top = st.columns([3, 1])
top[0].caption(f"Answering as **{student.pseudonym}** in class **{student.class_code}** · keep this page's link "
               "to continue later")
if top[1].button("Leave", key="quiz_leave"):
    st.query_params.clear()
    st.session_state.clear()
    st.rerun()

mode_names = list(MODES)
saved_mode = st.query_params.get("m")
default = next((i for i, n in enumerate(mode_names) if MODES[n] == saved_mode), 0)
mode_name = st.radio("Mode", mode_names, index=default, horizontal=True, key="quiz_mode")
mode = MODES[mode_name]
st.query_params["m"] = mode  # a refresh comes back to the same mode


# --- one item: show, commit, reveal --------------------------------------------------------------------

def current(slot: str, pick):
    """The item on screen in this slot (kept in session state until 'Next'); `pick()` -> (path, concept) or None."""
    cur = st.session_state.get(slot)
    if cur is None:
        picked = pick()
        if picked is None:
            return None
        cur = {"path": picked[0], "concept": picked[1], "attempt": quiz.new_attempt_id(), "shown": time.time()}
        st.session_state[slot] = cur
    return cur


def answer_form(slot: str, cur: dict, button: str = "Answer"):
    """The class picker (grouped by lineage; type to search); returns the chosen class once submitted."""
    with st.form(f"{slot}_form", clear_on_submit=False):
        chosen = st.selectbox("Your answer", quiz.lineage_options(), index=None, format_func=quiz.picker_label,
                              placeholder="Type a class, an abbreviation or a lineage...",
                              key=f"{slot}_pick_{cur['attempt']}")
        sent = st.form_submit_button(button, type="primary")
    if sent and chosen is None:
        st.warning("Pick a class first.")
        return None
    return chosen if sent else None


def commit(cur: dict, chosen: str, mode: str, exam_code: str | None = None) -> dict:
    """Score and store the answer (committed before anything is revealed); returns the stored record."""
    item = quiz.item_row(pool, cur["path"])
    result = quiz.score(item["expert"], chosen)
    record = Answer(attempt_id=cur["attempt"], token=student.token, item=cur["path"], expert=item["expert"],
                    chosen=chosen, model=item["model"], model_confidence=float(item["confidence"]),
                    strict=result.strict, tolerant=result.tolerant, credit=result.credit, mode=mode,
                    response_ms=int((time.time() - cur["shown"]) * 1000), exam_code=exam_code)
    updates = quiz.review_concepts(db.cards_of(student.token), item["expert"], chosen, result, time.time())
    db.record_answer(record, updates)  # False for a repeated attempt id: stored once, revealed again
    return {"chosen": chosen, "item": item, "result": result}


def show_item(cur: dict) -> None:
    ui.show_data_cell(active, cur["path"], label="Which cell is this?")


def small_gallery(abbr: str, exclude: str, n: int = 3) -> None:
    paths = [p for p in ui.paths_of_class(active, abbr) if p != exclude]
    if not paths:
        return
    rng = np.random.default_rng(zlib.crc32(exclude.encode()))
    cols = st.columns(n)
    for col, path in zip(cols, rng.choice(paths, size=min(n, len(paths)), replace=False)):
        with col:
            ui.show_data_cell(active, str(path), label=abbr, width="stretch")


def reveal(shown: dict) -> None:
    """Verdicts, feedback, the expert's and the model's labels, the model's evidence and, when wrong, the contrast
    map and a small gallery of the chosen class next to the expert's."""
    item, chosen, result = shown["item"], shown["chosen"], shown["result"]
    expert, model_label = item["expert"], item["model"]
    c = st.columns(3)
    c[0].metric("Strict", "right" if result.strict else "wrong")
    c[1].metric("Tolerant", "right" if result.tolerant else "wrong",
                help="Tolerant scoring accepts the neighbours the paper tolerates (e.g. myelocyte/metamyelocyte).")
    c[2].metric("Credit", f"{result.credit:g}")
    (st.success if result.strict else st.warning if result.near_miss else st.error)(
        quiz.feedback(expert, chosen, result, ui.teaching_text()))
    st.write(f"**Expert:** {ui.class_label(expert)} · **Model:** {ui.class_label(model_label)} "
             f"({item['confidence']:.0%} confident; the fold-{int(item['fold'])} model, which never trained on "
             "this image)")
    if item["contested"]:
        st.info("The model confidently disagrees with the expert here: the label may be debatable.")
    try:
        classes = ui.predictor(active).classes
        image_bytes = ui.read_data_bytes(active.data_dir, item["path"])
        pixels = np.asarray(ui.decode_image(image_bytes))
        explained = ui.explanation(active, image_bytes, item["path"])  # the fold model that held this cell out
        maps = st.columns(2)
        cam = explained.gradcam(classes.index(model_label))
        maps[0].image(overlay(pixels, cam, 0.5), caption=f"Grad-CAM: where the model saw {class_name(model_label)}",
                      width="stretch")
        if chosen != expert:
            why = explained.gradcam(classes.index(expert), versus=classes.index(chosen))
            maps[1].image(overlay(pixels, why, 0.5), width="stretch",
                          caption=f"Why {class_name(expert)} and not {class_name(chosen)}: evidence for the "
                                  "expert's class over yours")
    except (UserError, OSError, ValueError) as exc:
        st.caption(f"The model's maps are not available here ({exc}).")
    if chosen != expert:
        st.markdown(f"**What {class_name(chosen)} ({chosen}) looks like**")
        small_gallery(chosen, item["path"])
        st.markdown(f"**What {class_name(expert)} ({expert}) looks like**")
        small_gallery(expert, item["path"])


def play(slot: str, pick, mode: str, done_text: str) -> None:
    """Show an item, take the answer, store it, reveal; 'Next item' moves on."""
    cur = current(slot, pick)
    if cur is None:
        st.success(done_text)
        return
    revealed = st.session_state.get(f"{slot}_revealed")
    show_item(cur)
    if revealed is None or revealed["attempt"] != cur["attempt"]:
        form_area = st.empty()
        with form_area.container():
            chosen = answer_form(slot, cur)
        if chosen is None:
            return
        revealed = {"attempt": cur["attempt"], **commit(cur, chosen, mode)}
        st.session_state[f"{slot}_revealed"] = revealed
        form_area.empty()  # answered: the picker gives way to the reveal
    reveal(revealed)
    if mode == "beat":
        model_right = revealed["item"]["model"] == revealed["item"]["expert"]
        you_right = revealed["result"].strict
        verdict = {(True, False): "You beat the model!", (False, True): "The model won this one.",
                   (True, True): "Both right.", (False, False): "Both wrong."}[(you_right, model_right)]
        st.subheader(verdict)
    if st.button("Next item", type="primary", key=f"{slot}_next"):
        st.session_state.pop(slot, None)
        st.rerun()


def seen_items(mode: str | None = None) -> list[str]:
    return db.answers_of(student.token, mode=mode)["item"].tolist()


def rng_for(slot: str) -> np.random.Generator:
    """A per-student, per-answer-count random stream: reproducible, different for every student."""
    return np.random.default_rng([zlib.crc32(student.token.encode()), zlib.crc32(slot.encode()), len(seen_items())])


# --- modes ----------------------------------------------------------------------------------------------

def practice_pick():
    pick = quiz.next_practice_item(pool, db.cards_of(student.token), seen_items(), time.time(), rng_for("practice"))
    return None if pick is None else (pick.path, pick.concept)


def set_pick(paths: list[str], mode: str):
    def pick():
        path = quiz.next_in_set(paths, seen_items(mode), rng_for(mode))
        return None if path is None else (path, "")
    return pick


def exam_mode() -> None:
    code = st.text_input("Exam code", value=st.query_params.get("e", ""), key="exam_code").strip().upper()
    if not code:
        st.info("Enter the exam code your teacher gives you. Feedback comes at the end.")
        return
    exam = db.exam(code)
    if exam is None or exam.class_code != student.class_code:
        st.error(f"There is no exam {code} for class {student.class_code}.")
        return
    st.query_params["e"] = exam.code
    st.subheader(exam.title or f"Exam {exam.code}")
    started = db.exam_started(student.token, exam.code)
    if started is None:
        limit = f" You have {exam.time_limit_s // 60} minutes." if exam.time_limit_s else ""
        st.write(f"{len(exam.items)} cells.{limit} You will see your results at the end.")
        if not exam.is_open:
            st.warning("This exam is closed.")
            return
        if st.button("Start the exam", type="primary", key="exam_start"):
            db.start_exam(student.token, exam.code)
            st.rerun()
        return
    mine = db.answers_of(student.token, mode="exam", exam_code=exam.code)
    state = quiz.exam_state(exam.items, mine["item"], started, time.time(), exam.time_limit_s)
    if not state.finished and exam.is_open:
        st.progress(state.answered / state.total, text=f"Cell {state.answered + 1} of {state.total}")
        if state.seconds_left is not None:
            countdown(started + exam.time_limit_s)
        slot = f"exam_{exam.code}"
        cur = st.session_state.get(slot)
        if cur is None or cur["path"] != state.next_item:
            cur = {"path": state.next_item, "concept": "", "attempt": quiz.new_attempt_id(), "shown": time.time()}
            st.session_state[slot] = cur
        show_item(cur)
        chosen = answer_form(slot, cur, button="Answer and go on")
        if chosen is not None:
            now_state = quiz.exam_state(exam.items, mine["item"], started, time.time(), exam.time_limit_s)
            if not now_state.finished:  # the clock is checked again when the answer arrives
                commit(cur, chosen, "exam", exam.code)
            st.rerun()
        return
    exam_results(exam, mine)


@st.fragment(run_every=2)
def countdown(deadline: float) -> None:
    """The exam clock, redrawn on its own every 2 s; at zero the whole page reruns and shows the results."""
    left = max(0.0, deadline - time.time())
    st.caption(f"Time left: {int(left // 60)} min {int(left % 60):02d} s")
    if left == 0.0:
        st.rerun()


def exam_results(exam, mine: pd.DataFrame) -> None:
    report = quiz.exam_report(mine, exam.items)
    s = quiz.summary(mine)
    st.success("Exam finished." if exam.is_open else "This exam is closed: here are your results.")
    c = st.columns(3)
    c[0].metric("Strict", f"{report['strict'].mean():.0%}")
    c[1].metric("Tolerant", f"{report['tolerant'].mean():.0%}")
    c[2].metric("Credit", f"{report['credit'].sum():g} / {len(report)}")
    if s.get("answers"):
        st.caption(f"The model on the cells you answered: strict {s['model_strict']:.0%}, "
                   f"tolerant {s['model_tolerant']:.0%}.")
    st.table(report)
    st.download_button("Download the report (CSV)", report.to_csv(index=False).encode(), key="exam_csv",
                       file_name=f"exam-{exam.code}-{student.pseudonym}.csv", mime="text/csv")
    st.caption("For a printed copy, print this page from your browser.")


def results_mode() -> None:
    mine = db.answers_of(student.token)
    if mine.empty:
        st.info("No answers yet: start with Practice.")
        return
    s = quiz.summary(mine)
    c = st.columns(4)
    c[0].metric("Answers", s["answers"])
    c[1].metric("Strict", f"{s['strict']:.0%}", f"{s['strict'] - s['model_strict']:+.0%} vs model",
                help="The model's score is on the same cells, each predicted by a fold model that never saw it.")
    c[2].metric("Tolerant", f"{s['tolerant']:.0%}", f"{s['tolerant'] - s['model_tolerant']:+.0%} vs model")
    c[3].metric("Credit", f"{s['credit']:.2f}")
    st.subheader("Progress (last 10 answers)")
    st.line_chart(quiz.progress(mine).set_index("answer"))
    st.subheader("Per class: you and the model on the same cells")
    st.dataframe(quiz.class_table(mine), hide_index=True, key="results_classes")
    left, right = st.columns(2)
    left.markdown("**Your confusion matrix** (rows: expert)")
    left.dataframe(quiz.confusion(mine, "chosen"), key="results_conf_you")
    right.markdown("**The model's, on the same cells**")
    right.dataframe(quiz.confusion(mine, "model"), key="results_conf_model")


if mode == "practice":
    st.caption("Spaced practice: the cells come from the classes and pairs you confuse most, as they fall due.")
    play("practice_cur", practice_pick, "practice", "Nothing left to practise.")
elif mode == "beat":
    st.caption("Cells the model got wrong or was unsure about: who is right, you or the model?")
    play("beat_cur", set_pick(quiz.beat_the_model_items(pool), "beat"), "beat",
         "You have answered every beat-the-model cell.")
elif mode == "contested":
    st.caption("The model confidently disagrees with the expert on these cells. Look closely: who do you side with?")
    play("contested_cur", set_pick(quiz.contested_items(pool), "contested"), "contested",
         "You have answered every contested cell.")
elif mode == "exam":
    exam_mode()
else:
    results_mode()
