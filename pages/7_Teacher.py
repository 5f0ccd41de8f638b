"""Teacher: a live class overview, item difficulty and discrimination, the class's confusions (click a cell to see
its cells), remediation sets, class vs model, exams, CSV export and erasing a class. Instructor only."""
import time

import pandas as pd
import streamlit as st

from bmteach import quiz, ui
from bmteach.classes import class_name
from bmteach.errors import UserError

REFRESH_S = 5

active = ui.setup_page("Teacher", icon="🧑‍🏫")
st.title("Teacher: class results")
if not ui.instructor_guard("teacher"):
    st.stop()
db = ui.or_stop(ui.quiz_store)  # a read-only home or an unreachable database server: one sentence
pool = ui.or_stop(ui.quiz_pool, active) if active.has_data and active.has_run else None

with st.expander("Create a class"):
    title = st.text_input("Title (optional)", key="teacher_new_title")
    if st.button("Create the class", key="teacher_create"):
        code = db.create_class(title)
        st.session_state["teacher_class"] = code
        st.success(f"Class created. Students join on the Quiz page with the code **{code}**.")

classes = db.list_classes()
if classes.empty:
    st.info("No class yet: create one above and give its code to your students.")
    st.stop()
titles = dict(zip(classes["code"], classes["title"]))
code = st.selectbox("Class", list(titles), key="teacher_class",
                    format_func=lambda c: f"{c} · {titles[c]}" if titles.get(c) else c)
st.caption(f"Students join on the Quiz page with the class code **{code}**.")


@st.fragment(run_every=REFRESH_S)
def live_overview() -> None:
    answers = db.class_answers(code)
    c = st.columns(4)
    c[0].metric("Students", len(db.class_students(code)))
    c[1].metric("Answers", len(answers))
    if len(answers):
        s = quiz.summary(answers)
        c[2].metric("Strict", f"{s['strict']:.0%}", f"{s['strict'] - s['model_strict']:+.0%} vs model")
        c[3].metric("Tolerant", f"{s['tolerant']:.0%}", f"{s['tolerant'] - s['model_tolerant']:+.0%} vs model")
        st.dataframe(quiz.student_summaries(answers), hide_index=True, key="teacher_students")
    st.caption(f"Refreshed every {REFRESH_S} s · last at {time.strftime('%H:%M:%S')}")


st.header("Live overview")
live_overview()

answers = db.class_answers(code)
items_tab, conf_tab, pairs_tab, model_tab, exams_tab, data_tab = st.tabs(
    ["Items", "Confusions", "Confused pairs", "Class vs model", "Exams", "Export & erase"])

with items_tab:
    st.caption("Difficulty = share of students right (strict, first answers); discrimination = how well an item "
               "separates stronger from weaker students (correlation with the rest of their answers; needs 3+).")
    st.dataframe(quiz.item_stats(answers), hide_index=True, key="teacher_items",
                 column_config={"difficulty": st.column_config.ProgressColumn(min_value=0.0, max_value=1.0),
                                "discrimination": st.column_config.NumberColumn(format="%.2f")})

with conf_tab:
    points = quiz.confusion_points(answers)
    if points.empty:
        st.info("No answers yet.")
    else:
        event = st.plotly_chart(quiz.confusion_figure(points), on_select="rerun", selection_mode="points",
                                key="teacher_conf_chart")
        cells = [(r.expert, r.answer) for r in points.itertuples() if r.expert != r.answer]
        clicked = quiz.selected_cell(event)
        picked = st.selectbox("Or pick a confusion", cells, index=None, key="teacher_cell",
                              format_func=lambda c: f"expert {c[0]} -> answered {c[1]}")
        cell = clicked or picked
        if cell is not None:
            expert, chosen = cell
            st.markdown(f"**Expert {class_name(expert)}, answered {class_name(chosen)}**")
            behind = quiz.cell_items(answers, expert, chosen)
            cols = st.columns(6)
            for i, row in enumerate(behind.head(12).itertuples()):
                with cols[i % 6]:
                    ui.show_data_cell(active, row.item, label=f"model: {row.model} · {row.students} student(s)",
                                      width="stretch")

with pairs_tab:
    pairs = quiz.confused_pairs(answers)
    if pairs.empty:
        st.info("No confusions yet.")
    else:
        st.dataframe(pairs, hide_index=True, key="teacher_pairs")
        pair = st.selectbox("Remediation set for", pairs["pair"].tolist(), key="teacher_pair")
        if pool is not None:
            a, b = quiz.concept_classes(pair)
            remedy = quiz.remediation_set(pool, a, b, n=10)
            st.caption(f"Ten cells on the {a}/{b} border (closest by the model's probabilities; contested ones "
                       "left out): practise them together, or make them an exam.")
            cols = st.columns(5)
            for i, path in enumerate(remedy):
                with cols[i % 5]:
                    ui.show_data_cell(active, path, label=quiz.item_row(pool, path)["expert"], width="stretch")
            if st.button("Make these 10 an exam", key="teacher_remedy_exam"):
                exam = db.create_exam(code, remedy, title=f"Remediation {a}/{b}")
                st.success(f"Exam **{exam}** created.")

with model_tab:
    st.dataframe(quiz.class_vs_model(answers), hide_index=True, key="teacher_vs_model")

with exams_tab:
    if pool is None:
        st.info("Exams need the active run's out-of-fold predictions.")
    else:
        with st.form("teacher_exam_form"):
            exam_title = st.text_input("Title", key="teacher_exam_title")
            per_class = st.number_input("Cells per class", 1, 20, 2, key="teacher_exam_per_class")
            minutes = st.number_input("Time limit in minutes (0 = none)", 0, 600, 0, key="teacher_exam_minutes")
            contested = st.checkbox("Include contested cells", value=False, key="teacher_exam_contested")
            seed = st.number_input("Seed", 0, 10**6, 0, key="teacher_exam_seed")
            if st.form_submit_button("Create the exam"):
                items = quiz.exam_items(pool, int(per_class), int(seed), include_contested=contested)
                try:
                    exam = db.create_exam(code, items, exam_title, int(minutes) * 60 or None)
                except UserError as exc:
                    st.error(str(exc))
                else:
                    st.success(f"Exam **{exam}** created with {len(items)} cells.")
    for exam in db.class_exams(code):
        with st.container(border=True):
            status = "open" if exam.is_open else "closed"
            st.markdown(f"**{exam.code}** · {exam.title or 'untitled'} · {len(exam.items)} cells · {status}")
            if st.button("Close" if exam.is_open else "Reopen", key=f"teacher_toggle_{exam.code}"):
                db.set_exam_open(exam.code, not exam.is_open)
                st.rerun()
            taken = answers[answers["exam_code"] == exam.code]
            if len(taken):
                st.dataframe(quiz.student_summaries(taken), hide_index=True, key=f"teacher_exam_{exam.code}")
                st.download_button("Exam answers (CSV)", taken.to_csv(index=False).encode(),
                                   file_name=f"exam-{exam.code}.csv", mime="text/csv",
                                   key=f"teacher_exam_csv_{exam.code}")

with data_tab:
    st.download_button("Every answer of this class (CSV)", answers.to_csv(index=False).encode(),
                       file_name=f"answers-{code}.csv", mime="text/csv", key="teacher_csv")
    st.subheader("Erase this class")
    st.write("Deletes the class, its students, their answers, practice cards and exams. This cannot be undone.")
    confirm = st.text_input(f"Type the class code {code} to confirm", key="teacher_erase_confirm")
    if st.button("Erase the class", type="primary", key="teacher_erase", disabled=confirm.strip().upper() != code):
        n = db.erase_class(code)
        st.session_state.pop("teacher_class", None)
        st.success(f"Class {code} erased ({n} answers).")
        st.rerun()
