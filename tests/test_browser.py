"""End to end in a real browser: the Streamlit server as a user starts it, Debian's Chromium driven by Playwright.

What AppTest cannot do is checked here: the pages render in a browser without an exception, a click on the
lineage tree opens that class's card, and a broken upload on Explain is one sentence. The server reads a tiny
synthetic data set and the shipped demo run. Skipped where Chromium or Playwright is not installed (.ci/run
installs both).
"""
from __future__ import annotations

import time

import pytest
from browser import chromium_context, require_browser, streamlit_server, wait_until_idle

from bmteach.classes import ABBRS
from bmteach.storage import DEMO_RUN
from bmteach.synth import generate_dataset

playwright = require_browser()
PER_CLASS = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    data = generate_dataset(root / "data", per_class=PER_CLASS, seed=0, workers=1)
    env = {"BMTEACH_DATA": str(data), "BMTEACH_RUN": str(DEMO_RUN), "BMTEACH_HOME": str(root / "home")}
    with streamlit_server(env, root) as url:
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with chromium_context(tmp_path_factory.mktemp("chromium-profile")) as context:
        yield context


def open_page(browser, url: str):
    page = browser.new_page()
    page.goto(url)
    page.get_by_role("heading", level=1).first.wait_for(timeout=60_000)
    return page


def assert_no_exception(page) -> None:
    wait_until_idle(page)
    assert page.locator("[data-testid=stException]").count() == 0


def test_home_renders_with_the_active_data_sets_count(server, browser):
    page = open_page(browser, server)
    page.get_by_text("Images in the active data set").wait_for(timeout=30_000)
    assert page.get_by_text(f"{PER_CLASS * len(ABBRS)}", exact=True).count() >= 1
    assert_no_exception(page)
    page.close()


def test_clicking_a_node_of_the_lineage_tree_opens_its_card(server, browser):
    page = open_page(browser, server + "/Atlas")
    page.get_by_role("heading", name="Blast (BLA)").wait_for(timeout=60_000)
    # the class markers are the tree figure's fourth trace, one point per class in canonical order
    points = page.locator(".js-plotly-plot .scatterlayer .trace").nth(3).locator("path.point")
    points.nth(ABBRS.index("MON")).wait_for(timeout=30_000)
    points.nth(ABBRS.index("MON")).click(force=True)
    page.get_by_role("heading", name="Monocyte (MON)").wait_for(timeout=60_000)
    assert_no_exception(page)
    page.close()


def test_explain_shows_predictions_and_a_broken_upload_is_one_sentence(server, browser, tmp_path):
    page = open_page(browser, server + "/Explain")
    page.get_by_text("The model's top classes").wait_for(timeout=60_000)
    page.get_by_text("Grad-CAM for").first.wait_for(timeout=60_000)
    assert_no_exception(page)

    page.get_by_text("Upload your own").click()
    broken = tmp_path / "cell.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    page.locator("input[type=file]").set_input_files(str(broken))
    alert = page.locator("[data-testid=stAlertContentError]")
    alert.first.wait_for(timeout=60_000)
    assert "cell.jpg" in alert.first.inner_text() or "image" in alert.first.inner_text().lower()
    assert_no_exception(page)
    page.close()



# --- first start on an empty BMTEACH_HOME (issue 13.3) -------------------------------------------------------

@pytest.fixture
def empty_home_server(tmp_path):
    """A server on an empty BMTEACH_HOME and no BMTEACH_DATA: its first page view starts the generation of the
    built-in data set (stopped with the server's process group)."""
    with streamlit_server({"BMTEACH_HOME": str(tmp_path / "home")}, tmp_path,
                          unset=("BMTEACH_DATA", "BMTEACH_RUN")) as url:
        yield url


def test_two_sessions_on_an_empty_home_both_see_the_title_and_the_shared_progress(empty_home_server, browser):
    import re

    pages = [browser.new_page() for _ in range(2)]
    start = time.monotonic()
    # deep links, as after a server restart: the menu must still be app.py's (sections, "Home" first, no "app")
    for page, path in zip(pages, ("/Explain", "/Atlas")):
        page.goto(empty_home_server + path, wait_until="commit")
    progress = re.compile(r"Starting the generator|Drawing synthetic cells: [\d,]+ of [\d,]+")
    for page, title in zip(pages, ("Explain", "Atlas")):
        page.get_by_role("heading", level=1, name=title).wait_for(timeout=20_000)
        page.get_by_text("First start").first.wait_for(timeout=20_000)
        page.get_by_text(progress).first.wait_for(timeout=20_000)
    seconds = time.monotonic() - start
    assert seconds < 20, f"both sessions showed title and progress only after {seconds:.1f} s"
    for page in pages:
        menu = page.get_by_test_id("stSidebarNav").inner_text().split()
        assert menu[0] == "Learn" and "app" not in menu and "Home" in menu
    # the bar moves with a measured rate, never a fixed promise
    pages[1].get_by_text(re.compile(r"per second, about .* left")).first.wait_for(timeout=60_000)
    for page in pages:
        assert "about a minute" not in page.content()
        assert page.locator("[data-testid=stException]").count() == 0
        page.close()
