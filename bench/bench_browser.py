"""How long a student waits in a real browser: Playwright drives Debian's Chromium against `streamlit run app.py`
and times each click until the page has settled (Streamlit's script state back to "not running", its status
widget gone, every image loaded). Medians of several tries, printed beside the server-only figures of
bench/bench_app.py (AppTest, no browser) for the same actions.

    .venv/bin/python bench/bench_browser.py                 # models/demo + the built-in synthetic data
    .venv/bin/python bench/bench_browser.py --tries 7 --no-server-only
    .venv/bin/python bench/bench_browser.py --run RUN --data DIR

Needs playwright (pip) and chromium (apt-get install chromium); nothing is downloaded.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import TimeoutError as PlaywrightTimeout

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ACTIONS = ("page change", "class change", "new image with maps", "opacity slider", "target change",
           "SmoothGrad (25 samples)", "sanity check", "deletion curve")

# Settled: the script (or fragment) run that the click started is over, nothing is running, images are loaded.
ARM = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  window.__bmSeen = false;
  if (window.__bmObserver) window.__bmObserver.disconnect();
  window.__bmObserver = new MutationObserver(() => {
    if (app.getAttribute('data-test-script-state') !== 'notRunning') window.__bmSeen = true;
  });
  window.__bmObserver.observe(app, {attributes: true, attributeFilter: ['data-test-script-state']});
}"""
SETTLED = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  const running = document.querySelector('[data-testid="stStatusWidget"] button');
  return window.__bmSeen && app.getAttribute('data-test-script-state') === 'notRunning' && !running
    && Array.from(document.images).every(i => i.complete);
}"""
IDLE = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  return app && app.getAttribute('data-test-script-state') === 'notRunning'
    && Array.from(document.images).every(i => i.complete);
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(env: dict) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.address",
         "127.0.0.1", "--server.headless", "true"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.3)
    stop_server(proc)
    raise TimeoutError("streamlit did not start")


def stop_server(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=10)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


def wait_idle(page, timeout: float = 120_000) -> None:
    page.wait_for_function(IDLE, timeout=timeout, polling=50)


def timed(page, action) -> float:
    """Seconds from the click to a settled page."""
    wait_idle(page)
    page.evaluate(ARM)
    start = time.perf_counter()
    action()
    try:
        page.wait_for_function(SETTLED, timeout=60_000, polling="raf")
    except PlaywrightTimeout:  # a click that started no run (or a lost one): counted as missing, not as 60 s
        print(f"  no settled page within 60 s after a click ({page.url})", file=sys.stderr)
        return float("nan")
    return time.perf_counter() - start


def select_option(page, label: str, candidates: list[str], start: int = 0):
    """Open the selectbox labelled `label`; returns the click that picks the first of candidates (from start on)
    that is not the current value (picking the current value would start no run)."""
    box = page.get_by_test_id("stSelectbox").filter(has=page.get_by_text(label, exact=True)).first
    current = box.inner_text()
    ordered = candidates[start % len(candidates):] + candidates[:start % len(candidates)]
    option_text = next(c for c in ordered if f"{c} ·" not in current)
    box.locator("input").first.click()
    page.keyboard.type(option_text)  # the list is virtual: only options near the top exist until filtered
    option = page.get_by_role("option").filter(has_text=f"{option_text} ·").first
    option.wait_for(timeout=60_000)
    return option.click


def toggle(page, label: str):
    return page.get_by_test_id("stCheckbox").filter(has_text=label).first.locator("label").first.click


def browser_figures(url: str, tries: int) -> dict[str, list[float]]:
    from playwright.sync_api import sync_playwright

    times: dict[str, list[float]] = {a: [] for a in ACTIONS}
    with sync_playwright() as p, tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        context = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                                       headless=True, viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.goto(url + "/Explain")
        page.get_by_text("Grad-CAM for").first.wait_for(timeout=180_000)
        wait_idle(page)
        nav = page.get_by_test_id("stSidebarNav")
        for i in range(tries):  # Explain -> Atlas -> Explain: each leg one page change
            times["page change"].append(timed(page, nav.get_by_role("link", name="Atlas").click))
            times["page change"].append(timed(page, nav.get_by_role("link", name="Explain").click))
        classes = ["NGS", "EOS", "LYT", "MON", "PMO", "BLA", "PEB", "BAS", "MMZ", "NGB", "PLM", "HAC"]
        for i in range(tries):
            times["class change"].append(timed(page, select_option(page, "Class", classes, i)))
        for i in range(tries):  # a thumbnail not shown before: prediction and three Grad-CAM maps
            buttons = page.get_by_role("button", name="Select", exact=True)
            times["new image with maps"].append(timed(page, buttons.nth(i % max(1, buttons.count())).click))
        slider = page.get_by_role("slider").first
        for i in range(tries):
            slider.focus()
            times["opacity slider"].append(timed(page, lambda: page.keyboard.press(
                "ArrowRight" if i % 2 == 0 else "ArrowLeft")))
        targets = ["EOS", "MYB", "LYT", "BAS", "MON", "PLM", "NGB", "KSC", "ART", "EBO"]
        for i in range(tries):
            times["target change"].append(timed(page, select_option(page, "Explain the class", targets, i)))
        button = page.get_by_role("button", name="Compute SmoothGrad")
        for i in range(tries):
            times["SmoothGrad (25 samples)"].append(timed(page, button.click))
        for name, label in (("sanity check", "Sanity check"), ("deletion curve", "Faithfulness")):
            for i in range(tries):  # a new target each time: the check is computed, not read from the cache
                select_option(page, "Explain the class", targets, i + tries)()
                wait_idle(page)
                page.wait_for_timeout(300)
                times[name].append(timed(page, toggle(page, label)))
                toggle(page, label)()
                page.wait_for_timeout(300)
        context.close()
    return times


def server_figures(args, env: dict) -> dict[str, float]:
    """bench/bench_app.py (AppTest in this machine's Python, no browser) for the same actions."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [sys.executable, str(REPO / "bench" / "bench_app.py"), "--json", out.name, "--tries", str(args.tries)]
        subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
        return json.loads(Path(out.name).read_text())


def prepare_env(args) -> dict:
    from bmteach import settings
    from bmteach.storage import DEMO_RUN

    env = {**os.environ, "BMTEACH_HOME": tempfile.mkdtemp(prefix="bmteach-bench-home-")}
    if args.run:
        env[settings.RUN_ENV] = str(Path(args.run).resolve())
    if args.data:
        env[settings.DATA_ENV] = str(Path(args.data).resolve())
    else:  # the built-in set: reuse the checkout's when current, else draw it now (not timed)
        os.environ["BMTEACH_HOME"] = env["BMTEACH_HOME"]
        from bmteach.storage import default_data_dir
        from bmteach.synth import default_dataset_is_current, ensure_default_dataset
        ours, theirs = default_data_dir(), REPO / ".bmteach" / "data" / "synthetic"
        if theirs.is_dir():
            ours.parent.mkdir(parents=True, exist_ok=True)
            ours.symlink_to(theirs, target_is_directory=True)
            if not default_dataset_is_current():
                ours.unlink()
        ensure_default_dataset()
    print(f"run {args.run or DEMO_RUN}, data {args.data or 'built-in synthetic'}; "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tries", type=int, default=5, help="tries per action (median reported)")
    parser.add_argument("--run", help="run folder (default: models/demo)")
    parser.add_argument("--data", help="data folder (default: the built-in synthetic set)")
    parser.add_argument("--no-server-only", action="store_true", help="skip the AppTest figures")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    env = prepare_env(args)
    proc, url = start_server(env)
    try:
        browser = browser_figures(url, args.tries)
    finally:
        stop_server(proc)
    server = {} if args.no_server_only else server_figures(args, env)
    print(f"\n{'action':28s} {'browser (median)':>17s} {'range':>15s} {'server only':>12s}")
    rows = {}
    for action in ACTIONS:
        values = [v for v in browser[action] if v == v] or [float("nan")]  # NaN: a try that did not settle
        med = statistics.median(values)
        srv = server.get(action)
        rows[action] = {"browser_median_s": med, "browser_all_s": values, "server_only_s": srv}
        srv_text = f"{srv:10.2f} s" if srv is not None else f"{'-':>12s}"
        print(f"{action:28s} {med:15.2f} s {min(values):6.2f}-{max(values):5.2f} s {srv_text}")
    print(f"(load average after: {os.getloadavg()[0]:.1f})")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
