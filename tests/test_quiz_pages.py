"""AppTest of the Quiz and Teacher pages on a tiny synthetic data set and a tiny two-fold run whose out-of-fold
predictions are written by hand (tests/quiz_helpers.py: every cell right at 0.9, except a contested MMZ and an
unsure EOS)."""
from __future__ import annotations

import pytest
from helpers import run_page
from quiz_helpers import CONTESTED, make_quiz_setup
from streamlit.testing.v1 import AppTest

from bmteach import settings
from bmteach.storage import REPO_ROOT
from bmteach.store import open_store

QUIZ, TEACHER = (str(REPO_ROOT / p) for p in ("pages/2_Quiz.py", "pages/7_Teacher.py"))
SECRET = "correct horse"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_quiz_setup(tmp_path_factory.mktemp("quizapp"))


@pytest.fixture
def env(env, monkeypatch):
    """conftest's env (the app pointed at `tiny`) with the default quiz database; returns the store."""
    monkeypatch.delenv("BMTEACH_DB_URL", raising=False)
    return open_store()


def texts(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "caption", "info", "error", "warning", "success", "header",
                                  "subheader", "title") for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


def answer_box(at: AppTest):
    return next(s for s in at.selectbox if s.label == "Your answer")


def submit(at: AppTest, label: str = "Answer") -> None:
    next(b for b in at.button if b.label == label).click().run()
    assert not at.exception, [e.value for e in at.exception]


def test_joining_puts_the_token_in_the_url_and_a_refresh_resumes(env):
    code = env.create_class("Test class")
    at = run_page(QUIZ)
    assert "Join your class" in texts(at)
    at.text_input(key="join_code").input(code.lower())
    at.text_input(key="join_name").input("ann")
    submit(at, "Join")
    token = at.query_params["t"]
    assert env.student(token).pseudonym == "ann"
    # a refresh is a new session: only the URL survives
    again = run_page(QUIZ, t=token)
    assert "Answering as **ann**" in texts(again) and not [t for t in again.text_input if t.key == "join_code"]
    stale = run_page(QUIZ, t="no-such-token")
    assert "not valid any more" in texts(stale)


def test_a_practice_round_commits_then_reveals_and_stores_each_answer_once(env):
    code = env.create_class()
    ann = env.join(code, "ann")
    at = run_page(QUIZ, t=ann.token)
    assert any(img.captions and "Which cell is this?" in img.captions[0] for img in at.image)
    assert "Expert:" not in texts(at)  # nothing revealed before the answer
    answer_box(at).select("MYB")
    submit(at)
    stored = env.answers_of(ann.token)
    assert len(stored) == 1 and stored["chosen"].iloc[0] == "MYB" and stored["mode"].iloc[0] == "practice"
    assert "Expert:" in texts(at) and {m.label for m in at.metric} >= {"Strict", "Tolerant", "Credit"}
    assert len(at.image) >= 2  # the cell and the model's Grad-CAM
    at.run()  # a rerun (or a double click) of the same attempt stores nothing new
    assert len(env.answers_of(ann.token)) == 1
    assert not env.cards_of(ann.token).empty
    next(b for b in at.button if b.label == "Next item").click().run()
    answer_box(at).select("NGS")
    submit(at)
    assert len(env.answers_of(ann.token)) == 2
    results = run_page(QUIZ, t=ann.token, m="results")
    assert "Per class: you and the model" in texts(results)


def test_beat_the_model_and_experts_disagree_sets(env):
    code = env.create_class()
    ann = env.join(code, "ann")
    at = run_page(QUIZ, t=ann.token, m="beat")
    answer_box(at).select("EOS")  # the only beat-the-model cell: an EOS the model called BAS, unsure
    submit(at)
    assert "You beat the model!" in texts(at)
    next(b for b in at.button if b.label == "Next item").click().run()
    assert "You have answered every beat-the-model cell." in texts(at)
    at = run_page(QUIZ, t=ann.token, m="contested")
    answer_box(at).select("MYB")  # the contested MMZ: the model says MYB at 95%
    submit(at)
    assert "confidently disagrees" in texts(at) and "near miss" in texts(at)
    assert sorted(env.answers_of(ann.token)["mode"]) == ["beat", "contested"]


def test_an_exam_gives_feedback_only_at_the_end(env, tiny):
    data, _ = tiny
    code = env.create_class()
    ann = env.join(code, "ann")
    items = ["MMZ/0001-0003/MMZ_00002.jpg", "MYB/0001-0003/MYB_00002.jpg"]
    exam = env.create_exam(code, items, title="Week 1", time_limit_s=600)
    at = run_page(QUIZ, t=ann.token, m="exam", e=exam)
    assert "Week 1" in texts(at) and "10 minutes" in texts(at)
    next(b for b in at.button if b.label == "Start the exam").click().run()
    for chosen in ("MMZ", "NGS"):
        assert "Expert:" not in texts(at)
        answer_box(at).select(chosen)
        submit(at, "Answer and go on")
    mine = env.answers_of(ann.token, mode="exam", exam_code=exam)
    assert mine["item"].tolist() == items and mine["strict"].tolist() == [True, False]
    assert "Exam finished." in texts(at)
    report = at.table[0].value
    assert report["your answer"].tolist() == ["MMZ", "NGS"] and report["credit"].tolist() == [1.0, 0.0]


def test_an_exam_whose_time_is_up_takes_no_more_answers(env):
    import time

    code = env.create_class()
    ann = env.join(code, "ann")
    exam = env.create_exam(code, ["MMZ/0001-0003/MMZ_00002.jpg"], time_limit_s=60)
    env.start_exam(ann.token, exam, now=time.time() - 120)
    at = run_page(QUIZ, t=ann.token, m="exam", e=exam)
    assert "Exam finished." in texts(at) and not [s for s in at.selectbox if s.label == "Your answer"]
    assert at.table[0].value["your answer"].tolist() == ["(none)"]


def test_the_teacher_page_needs_the_secret(env):
    at = run_page(TEACHER)
    assert settings.SECRET_ENV in texts(at) and not at.selectbox


def test_the_teacher_page_with_the_secret(env, monkeypatch):
    monkeypatch.setenv(settings.SECRET_ENV, SECRET)
    code = env.create_class("Haematology")
    ann, bob = env.join(code, "ann"), env.join(code, "bob")
    from bmteach.store import Answer
    for who, chosen in ((ann, "MYB"), (bob, "MMZ")):
        env.record_answer(Answer(f"{who.pseudonym}-1", who.token, "MMZ/0001-0003/MMZ_00002.jpg", "MMZ", chosen,
                                 "MMZ", chosen == "MMZ", True, 1.0 if chosen == "MMZ" else 0.5))
    at = run_page(TEACHER)
    at.text_input(key="teacher_secret").input("wrong").run()
    assert "not the instructor secret" in texts(at) and not at.selectbox
    at.text_input(key="teacher_secret").input(SECRET).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="teacher_class").value == code
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Students"] == "2" and metrics["Answers"] == "2" and metrics["Strict"] == "50%"
    # a confusion picked from the list shows its cells with the model's label
    at.selectbox(key="teacher_cell").select(("MMZ", "MYB")).run()
    assert any("model: MMZ" in (img.captions[0] if img.captions else "") for img in at.image)
    # an exam is created from the pool, class-balanced
    at.button(key="FormSubmitter:teacher_exam_form-Create the exam").click().run()
    exams = env.class_exams(code)
    assert len(exams) == 1 and len(exams[0].items) == 2 * 21  # two of the three cells of every class
    assert CONTESTED not in exams[0].items  # the contested cell is left out
    # erase after typing the code
    at.text_input(key="teacher_erase_confirm").input(code).run()
    at.button(key="teacher_erase").click().run()
    assert not at.exception and not env.class_exists(code) and env.student(ann.token) is None
