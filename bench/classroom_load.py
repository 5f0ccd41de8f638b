"""A simulated classroom against real app servers: N students, each its own websocket session, answering
practice items for a while; then the database must hold exactly the answers sent, none twice.

    .venv/bin/python bench/classroom_load.py                          # 30 students, 2 minutes, one server, SQLite
    .venv/bin/python bench/classroom_load.py --students 10 --seconds 60
    .venv/bin/python bench/classroom_load.py --servers 2 --postgres   # two servers sharing one PostgreSQL
    .venv/bin/python bench/classroom_load.py --browser --students 5   # Chromium pages instead of the client

A student is, by default, a websocket client speaking Streamlit's protocol (BackMsg rerun requests with widget
states, ForwardMsg deltas back, the cell images fetched over HTTP as a browser would): light enough that 30 of
them on a 2-core machine measure the server, not 30 browsers. It looks at each cell for 3-7 s (--think) before
answering, as a student would. With --browser each student is a Chromium page (no think time).

Everything stays on 127.0.0.1: `streamlit run app.py` on free ports, Debian's Chromium driven by Playwright
(never downloaded), PostgreSQL (with --postgres) as the unprivileged postgres user on a Unix socket in a temp
folder (tests/postgres_server.py). The data set is the default synthetic one and the model models/demo; the
database is a fresh one in a temp folder. Each student joins a fresh class through the URL token, then loops:
pick a class, 'Answer' (sent), wait for the reveal, 'Next item', wait for the next cell. Also a double click on
'Answer' now and then (must still be stored once). Prints answers sent/stored/duplicated, client-side p50/p95
of Answer -> reveal and Next -> next cell, and the servers' peak memory (RSS).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
CHOICES = ["MYB", "MMZ", "NGB", "NGS", "EOS", "LYT", "BLA", "EBO"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(env: dict, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(log_path, "wb")  # noqa: SIM115 - a file, never a pipe nobody reads
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.address",
         "127.0.0.1", "--server.headless", "true", "--server.fileWatcherType", "none",
         "--browser.gatherUsageStats", "false"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited early; see {log_path}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise TimeoutError("streamlit did not become healthy in 120 s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Stats:
    def __init__(self):
        self.sent = 0
        self.double_clicks = 0
        self.reveal: list[float] = []
        self.next: list[float] = []
        self.errors: list[str] = []


async def student(browser, url: str, token: str, until: float, stats: Stats, seed: int) -> None:
    rng = np.random.default_rng(seed)
    context = await browser.new_context(viewport={"width": 1200, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(60_000)
    try:
        await page.goto(f"{url}/Quiz?t={token}&m=practice")
        while time.monotonic() < until:
            box = page.get_by_role("combobox", name="Your answer")
            await box.wait_for()
            await box.click()
            await page.keyboard.type(str(rng.choice(CHOICES)))
            await page.keyboard.press("Enter")
            answer = page.get_by_role("button", name="Answer", exact=True)
            t0 = time.monotonic()
            if rng.random() < 0.1:   # a double click: the second must not store a second answer
                await answer.dblclick()
                stats.double_clicks += 1
            else:
                await answer.click()
            stats.sent += 1
            nxt = page.get_by_role("button", name="Next item")
            await nxt.wait_for()                      # only the reveal has this button
            await page.get_by_text("Expert:").first.wait_for()
            stats.reveal.append(time.monotonic() - t0)
            t0 = time.monotonic()
            await nxt.click()
            await nxt.wait_for(state="detached")      # the reveal is gone (stale elements stay until the rerun)
            await box.wait_for()
            stats.next.append(time.monotonic() - t0)
    except Exception as exc:  # noqa: BLE001 - a failing student is reported, the others go on
        stats.errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    finally:
        await context.close()


class Session:
    """One Streamlit websocket session on the Quiz page: rerun with widget states, read the page back."""

    def __init__(self, ws, base_url: str, query: str):
        self.ws, self.base_url, self.query = ws, base_url, query
        self.widgets: dict = {}
        self.images: list[str] = []
        self.text = ""

    async def rerun(self, states=None) -> None:
        """Send one rerun request; collect widgets (by label), image URLs and markdown until the run ends
        (a run that ends early for an st.rerun() is followed by the next one)."""
        from streamlit.proto.BackMsg_pb2 import BackMsg
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        msg = BackMsg()
        msg.rerun_script.query_string = self.query
        msg.rerun_script.page_name = "Quiz"
        if states is not None:
            msg.rerun_script.widget_states.CopyFrom(states)
        await self.ws.send(msg.SerializeToString())
        self.widgets, self.images, texts = {}, [], []
        while True:
            fm = ForwardMsg.FromString(await self.ws.recv())
            kind = fm.WhichOneof("type")
            if kind == "delta" and fm.delta.WhichOneof("type") == "new_element":
                el = fm.delta.new_element
                ty = el.WhichOneof("type")
                if ty in ("selectbox", "button", "radio"):
                    self.widgets[getattr(el, ty).label] = getattr(el, ty)
                elif ty == "imgs":
                    self.images += [i.url for i in el.imgs.imgs]
                elif ty in ("markdown", "alert"):
                    texts.append(getattr(el, ty).body)
            elif kind == "script_finished":
                if fm.script_finished != ForwardMsg.FINISHED_EARLY_FOR_RERUN:
                    break
                self.widgets, self.images, texts = {}, [], []
        self.text = "\n".join(texts)
        await asyncio.gather(*(asyncio.to_thread(self._fetch, u) for u in self.images))

    def _fetch(self, path: str) -> None:
        with urllib.request.urlopen(self.base_url + path, timeout=60) as r:
            r.read()

    def press(self, label: str, extra: dict | None = None):
        """Widget states for a click on a button (and values for other widgets, by label)."""
        from streamlit.proto.WidgetStates_pb2 import WidgetStates

        states = WidgetStates()
        for name, value in (extra or {}).items():
            w = states.widgets.add()
            w.id = self.widgets[name].id
            w.string_value = value
        b = states.widgets.add()
        b.id = self.widgets[label].id
        b.trigger_value = True
        return states


async def ws_student(url: str, token: str, until: float, stats: Stats, seed: int,
                     think: tuple[float, float] = (3.0, 7.0), max_answers: int | None = None) -> None:
    import websockets

    from bmteach.quiz import picker_label

    rng = np.random.default_rng(seed)
    try:
        async with websockets.connect(url.replace("http://", "ws://") + "/_stcore/stream",
                                      subprotocols=["streamlit"], max_size=None, open_timeout=60) as ws:
            page = Session(ws, url, f"t={token}&m=practice")
            await page.rerun()
            while time.monotonic() < until and (max_answers is None or stats.sent < max_answers):
                await asyncio.sleep(rng.uniform(*think))  # looking at the cell before answering
                if "Answer" not in page.widgets:
                    raise RuntimeError(f"no item on the page: {page.text[:200]!r}")
                choice = {"Your answer": picker_label(str(rng.choice(CHOICES)))}
                t0 = time.monotonic()
                states = page.press("Answer", choice)
                stats.sent += 1
                if rng.random() < 0.1:   # a double click: the same submission twice
                    stats.double_clicks += 1
                    await page.rerun(states)
                await page.rerun(states)
                if "Next item" not in page.widgets or "Expert:" not in page.text:
                    raise RuntimeError(f"no reveal after an answer: {page.text[:200]!r}")
                stats.reveal.append(time.monotonic() - t0)
                t0 = time.monotonic()
                await page.rerun(page.press("Next item"))
                stats.next.append(time.monotonic() - t0)
    except Exception as exc:  # noqa: BLE001 - a failing student is reported, the others go on
        stats.errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")


async def ws_classroom(urls: list[str], tokens: list[str], seconds: float, stats: Stats, pids: list[int],
                       think: tuple[float, float]) -> float:
    until = time.monotonic() + seconds
    tasks = []
    for i, token in enumerate(tokens):
        tasks.append(asyncio.create_task(ws_student(urls[i % len(urls)], token, until, stats, i, think)))
        await asyncio.sleep(0.1)  # students arrive over a few seconds, not in one instant
    peak = 0.0
    while not all(t.done() for t in tasks):
        peak = max(peak, sum(rss_mib(pid) for pid in pids))
        await asyncio.sleep(0.5)
    return peak


async def classroom(urls: list[str], tokens: list[str], seconds: float, stats: Stats, pids: list[int]) -> float:
    from playwright.async_api import async_playwright

    peak = 0.0
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)  # fresh temp profile
        until = time.monotonic() + seconds
        tasks = []
        for i, token in enumerate(tokens):
            tasks.append(asyncio.create_task(student(browser, urls[i % len(urls)], token, until, stats, i)))
            await asyncio.sleep(0.2)  # students arrive over a few seconds, not in one instant
        while not all(t.done() for t in tasks):
            peak = max(peak, sum(rss_mib(pid) for pid in pids))
            await asyncio.sleep(1.0)
        await browser.close()
    return peak


def pct(values: list[float]) -> str:
    if not values:
        return "n/a"
    ms = np.asarray(values) * 1000
    return f"p50 {np.percentile(ms, 50):.0f} ms, p95 {np.percentile(ms, 95):.0f} ms (n={len(ms)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--servers", type=int, default=1)
    parser.add_argument("--postgres", action="store_true", help="share one PostgreSQL server (else SQLite)")
    parser.add_argument("--browser", action="store_true", help="Chromium pages instead of websocket clients")
    parser.add_argument("--think", type=float, nargs=2, default=(3.0, 7.0), metavar=("MIN", "MAX"),
                        help="seconds a websocket student looks at a cell before answering (uniform)")
    args = parser.parse_args()
    if args.browser and not Path(CHROMIUM).exists():
        sys.exit("Chromium is not installed (apt-get install chromium).")

    from bmteach.store import Store
    from bmteach.synth import ensure_default_dataset

    ensure_default_dataset()  # the servers must not all generate it at once
    tmp = Path(tempfile.mkdtemp(prefix="classroom-"))
    pg = None
    if args.postgres:
        from postgres_server import PostgresServer
        pg = PostgresServer(port=55500)
        db_url = pg.start()
    else:
        db_url = f"sqlite:///{tmp / 'quiz.sqlite'}"
    servers = []
    try:
        db = Store(db_url)
        code = db.create_class("classroom load")
        tokens = [db.join(code, f"student-{i:02d}").token for i in range(args.students)]
        env = {**os.environ, "BMTEACH_DB_URL": db_url, "OMP_NUM_THREADS": "1"}
        env.pop("BMTEACH_DATA", None)
        env.pop("BMTEACH_RUN", None)
        for k in range(args.servers):
            servers.append(start_server(env, tmp / f"streamlit{k}.log"))
        urls, pids = [u for _, u in servers], [p.pid for p, _ in servers]
        kind = "Chromium pages" if args.browser else "websocket clients"
        print(f"{args.students} students ({kind}), {args.seconds:.0f} s, {args.servers} server(s), "
              f"{'PostgreSQL' if pg else 'SQLite'}; logs in {tmp}")
        # one warm-up answer per server in another class: torch, the five fold models and the caches load
        # before the clock starts (a real class would find a server already warm)
        warm_code = db.create_class("warm-up")
        for k, url in enumerate(urls):
            warm = Stats()
            asyncio.run(ws_student(url, db.join(warm_code, f"warm-{k}").token, time.monotonic() + 300, warm, 99,
                                   (0, 0), max_answers=2))
            if warm.errors:
                raise RuntimeError(f"warm-up failed: {warm.errors[0]}")
        db.erase_class(warm_code)
        stats = Stats()
        t0 = time.monotonic()
        load0, cpu0 = os.getloadavg()[0], sum(cpu_seconds(p) for p in pids)
        if args.browser:
            peak = asyncio.run(classroom(urls, tokens, args.seconds, stats, pids))
        else:
            peak = asyncio.run(ws_classroom(urls, tokens, args.seconds, stats, pids, tuple(args.think)))
        wall = time.monotonic() - t0
        cpu = sum(cpu_seconds(p) for p in pids) - cpu0
        rows = db.class_answers(code)
        stored, unique = len(rows), rows["attempt_id"].nunique()
        doubled = int(rows.duplicated(["pseudonym", "item"]).sum())
        print(f"wall {wall:.0f} s; answers sent {stats.sent} (incl. {stats.double_clicks} double clicks), "
              f"stored {stored}, unique attempt ids {unique}, same student+item stored twice {doubled}")
        where = "on screen" if args.browser else "page and images received"
        print(f"Answer -> reveal, {where}:      {pct(stats.reveal)}")
        print(f"Next item -> next cell, {where}: {pct(stats.next)}")
        print(f"servers' peak RSS: {peak:.0f} MiB in all; machine load average {load0:.1f} at the start, "
              f"{os.getloadavg()[0]:.1f} at the end ({os.cpu_count()} cores)")
        print(f"servers' CPU: {cpu:.1f} s in all, {cpu / max(stats.sent, 1) * 1000:.0f} ms per answer cycle "
              "(answer + reveal + next cell, images served)")
        if stats.errors:
            print(f"{len(stats.errors)} student(s) stopped early: {stats.errors[:3]}")
        verdict = "OK" if stored == stats.sent == unique and doubled == 0 else "MISMATCH"
        print(f"stored == sent, none doubled: {verdict}")
        db.close()
    finally:
        for proc, _ in servers:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        if pg is not None:
            pg.stop()


if __name__ == "__main__":
    main()
