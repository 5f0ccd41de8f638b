"""The quiz in a real browser: `streamlit run app.py` on 127.0.0.1, Debian's Chromium driven by Playwright. A
student opens the quiz link (token in the URL), types a class into the picker, answers, and sees the reveal
(expert, model, Grad-CAM); the answer is in the database once; a reload of the link resumes as the same student.
Skipped where Chromium or Playwright is not installed (.ci/run installs both)."""
from __future__ import annotations

import pytest
from browser import CHROMIUM, CHROMIUM_ARGS, require_browser, streamlit_server
from quiz_helpers import make_quiz_setup

from bmteach.store import Store

playwright = require_browser()


@pytest.fixture(scope="module")
def quiz_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("quizbrowser")
    data, run = make_quiz_setup(root)
    db_url = f"sqlite:///{root / 'quiz.sqlite'}"
    env = {"BMTEACH_DATA": str(data), "BMTEACH_RUN": str(run), "BMTEACH_HOME": str(root / "home"),
           "BMTEACH_DB_URL": db_url}
    with streamlit_server(env, root) as url:
        store = Store(db_url)
        yield url, store
        store.close()


def test_a_student_answers_in_the_browser_and_sees_the_reveal(quiz_server):
    url, store = quiz_server
    ann = store.join(store.create_class("browser"), "ann")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.set_default_timeout(60_000)
        page.goto(f"{url}/Quiz?t={ann.token}")
        page.get_by_text("Answering as").first.wait_for()
        box = page.get_by_role("combobox", name="Your answer")
        box.click()
        page.keyboard.type("Myelocyte")
        page.keyboard.press("Enter")
        page.get_by_role("button", name="Answer", exact=True).click()
        page.get_by_role("button", name="Next item").wait_for()  # the last element of the reveal
        page.get_by_text("Expert:").first.wait_for()
        page.get_by_text("Grad-CAM: where the model saw").first.wait_for()
        stored = store.answers_of(ann.token)
        assert len(stored) == 1 and stored["chosen"].iloc[0] == "MYB"
        page.reload()  # a refresh: the URL token brings the same student back
        page.get_by_text("Answering as").first.wait_for()
        assert "ann" in page.get_by_text("Answering as").first.inner_text()
        browser.close()
    assert len(store.answers_of(ann.token)) == 1
