"""Feature map and Errors in a real browser (issue 10): `streamlit run app.py` on 127.0.0.1, Debian's Chromium
driven by Playwright, the shipped demo run on the built-in synthetic set.

What AppTest cannot do is checked here: a click on one point of the WebGL map (plotly Scattergl) opens that
cell's card, and a click on one square of the confusion matrix shows the images behind it. The map is computed
before the server starts (as the page would on first use), so the page loads it from the cache. Skipped where
Chromium or Playwright is not installed (.ci/run installs both).
"""
from __future__ import annotations

import os

import numpy as np
import pytest
from browser import chromium_context, require_browser, streamlit_server
from browser import CHROMIUM_ARGS as BASE_ARGS
from browser import wait_until_idle

from bmteach.classes import class_name
from bmteach.storage import DEMO_RUN

playwright = require_browser()
pytestmark = pytest.mark.slow
CHROMIUM_ARGS = BASE_ARGS + ["--enable-unsafe-swiftshader"]  # software WebGL for the Scattergl map
HANG_MS = 120_000  # only to catch hangs: 2 shared cores can be very busy


@pytest.fixture(scope="module")
def server(default_data, tmp_path_factory):
    """The app on the demo run and the built-in set, its map already computed in this session's BMTEACH_HOME."""
    from bmteach.embed import embed_run

    embed_run(DEMO_RUN, default_data)  # what the Feature map page computes on first use (features, then UMAP)
    root = tmp_path_factory.mktemp("explorebrowser")
    env = {"BMTEACH_DATA": str(default_data), "BMTEACH_RUN": str(DEMO_RUN), "BMTEACH_HOME": os.environ["BMTEACH_HOME"]}
    with streamlit_server(env, root) as url:
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with chromium_context(tmp_path_factory.mktemp("chromium-profile"), CHROMIUM_ARGS, HANG_MS) as context:
        yield context


def assert_no_exception(page) -> None:
    wait_until_idle(page, HANG_MS)
    assert page.locator("[data-testid=stException]").count() == 0


# The drawn figure's first trace, as plotly.js holds it after drawing: point positions in page pixels, the
# hover text and customdata of each point (plotly decodes the typed arrays Python sends).
POINTS_JS = """() => {
    const gd = document.querySelector('.js-plotly-plot');
    const t = gd._fullData[0], xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
    const box = gd.getBoundingClientRect(), size = gd._fullLayout._size;
    const px = Array.from(t.x, v => box.left + size.l + xa.d2p(v));
    const py = Array.from(t.y, v => box.top + size.t + ya.d2p(v));
    return {px: px, py: py, text: Array.from(t.hovertext || t.text || []),
            custom: Array.from(t.customdata || [], c => Array.isArray(c) ? c.map(String) : [String(c)])};
}"""


def test_clicking_a_point_of_the_map_opens_its_card(server, browser):
    page = browser.new_page()
    page.goto(server + "/Feature_map")
    page.get_by_text("Click a point to open its card").wait_for()
    page.locator(".js-plotly-plot .gl-container canvas").first.wait_for()
    assert_no_exception(page)
    page.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
    pts = page.evaluate(POINTS_JS)
    xy = np.column_stack([pts["px"], pts["py"]])
    assert len(xy) == 2100, len(xy)
    # aim at the most isolated point; in a dense map its neighbour may still be nearer to plotly's picking (a few
    # px off the positions computed here), so the card expected is the hovered point's: plotly selects on click
    # the point it shows under the cursor
    gaps = np.sqrt(((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(gaps, np.inf)
    i = int(gaps.min(axis=1).argmax())
    x, y = xy[i]
    page.mouse.move(x - 3, y - 3)
    page.mouse.move(x, y)
    label = page.locator(".hoverlayer .hovertext").first
    label.wait_for()
    hovered = label.text_content()            # "<expert> → <predicted> · <file name>"
    assert hovered in pts["text"], hovered
    expert, file_name = hovered.split(" → ")[0], hovered.split(" · ")[-1]
    page.mouse.click(x, y)
    page.get_by_role("heading", name=f"{class_name(expert)} ({expert})").wait_for()
    page.get_by_text(file_name).first.wait_for()
    page.get_by_text("Expert:").first.wait_for()
    page.get_by_text("Grad-CAM for the prediction").first.wait_for()
    page.get_by_text("Nearest cells of the same class").first.wait_for()
    assert_no_exception(page)
    page.close()


def test_clicking_a_square_of_the_confusion_matrix_shows_its_images(server, browser):
    page = browser.new_page()
    page.goto(server + "/Errors")
    page.get_by_text("Click a square of the matrix").wait_for()
    page.get_by_text("Images flagged").wait_for()  # the end of the page: the run has finished
    assert_no_exception(page)
    pts = page.evaluate(POINTS_JS)
    # an off-diagonal square with the fewest images: few Grad-CAMs to draw on a busy CPU
    off = [k for k, (true, pred, _) in enumerate(pts["custom"]) if true != pred]
    assert off, "the demo run's matrix has no off-diagonal square"
    k = min(off, key=lambda j: int(pts["custom"][j][2]))
    true, pred, count = pts["custom"][k]
    square = page.locator(".js-plotly-plot .scatterlayer .trace").first.locator("path.point").nth(k)
    square.scroll_into_view_if_needed()
    square.click(force=True)
    page.get_by_role("heading", name=f"Expert {true} → model {pred}: {int(count):,} image{'' if int(count) == 1 else 's'}").wait_for()
    page.get_by_text(f"{class_name(true)} predicted as {class_name(pred)}").first.wait_for()
    page.get_by_text(f"Grad-CAM: predicted class {pred}").first.wait_for()
    page.get_by_text(f"Grad-CAM: expert class {true}").first.wait_for()
    page.get_by_text("Images flagged").wait_for()
    assert_no_exception(page)
    page.close()
