"""Answer -> next item, server side, on the demo run (models/demo) and the default synthetic data set.

    .venv/bin/python bench/bench_quiz.py                    # library calls: commit an answer, pick the next item
    .venv/bin/python bench/bench_quiz.py --apptest 15       # also the Quiz page itself (AppTest), 15 rounds
    .venv/bin/python bench/bench_quiz.py --db-url postgresql+psycopg://...   # another database

Library part, per answer (what the page does between the click and the next cell on screen, without drawing):
commit = read the student's cards, score, FSRS review, store the answer (committed); next = read the student's
answers and cards, choose the next practice item, read and decode its image. Reveal = Grad-CAM for the model's
class plus the contrast map, on the fold model that held the cell out (the page caches these per image).
AppTest part: a whole page rerun after 'Answer' (commit + reveal) and after 'Next item' (next cell drawn).
Prints p50/p95/max in milliseconds. Target (issue 9): answer -> next item p95 <= 300 ms on CPU.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def pct(values: list[float]) -> str:
    ms = np.asarray(values) * 1000
    return f"p50 {np.percentile(ms, 50):7.1f}  p95 {np.percentile(ms, 95):7.1f}  max {ms.max():7.1f} ms  (n={len(ms)})"


def simulate_choice(expert: str, rng: np.random.Generator) -> str:
    """A student right 70% of the time; otherwise a chain neighbour or a random class."""
    from bmteach.classes import ABBRS, BY_ABBR, CHAINS
    if rng.random() < 0.7:
        return expert
    chain = CHAINS.get(BY_ABBR[expert].chain)
    if chain and rng.random() < 0.6:
        i = chain.index(expert)
        near = [chain[j] for j in (i - 1, i + 1) if 0 <= j < len(chain)]
        return str(rng.choice(near))
    return str(rng.choice(ABBRS))


def library_bench(db_url: str, students: int, answers: int, reveal: int) -> None:
    from bmteach import quiz, runs
    from bmteach.images import load_image
    from bmteach.data import index
    from bmteach.storage import DEMO_RUN
    from bmteach.store import Answer, Store
    from bmteach.synth import ensure_default_dataset

    data = ensure_default_dataset()
    t = time.perf_counter()
    pool = quiz.build_pool(runs.read_oof(DEMO_RUN), index(data).items)
    print(f"pool: {len(pool)} items, {int(pool['contested'].sum())} contested, built in "
          f"{time.perf_counter() - t:.2f} s (once per process, cached by the app)")
    db = Store(db_url)
    code = db.create_class("bench")
    rng = np.random.default_rng(0)
    commit_t, next_t, total_t = [], [], []
    for s in range(students):
        student = db.join(code, f"bench-{s}")
        path = quiz.next_practice_item(pool, db.cards_of(student.token), [], time.time(), rng).path
        for _ in range(answers):
            item = quiz.item_row(pool, path)
            chosen = simulate_choice(item["expert"], rng)
            t0 = time.perf_counter()
            result = quiz.score(item["expert"], chosen)
            updates = quiz.review_concepts(db.cards_of(student.token), item["expert"], chosen, result, time.time())
            db.record_answer(Answer(quiz.new_attempt_id(), student.token, path, item["expert"], chosen, item["model"],
                                    result.strict, result.tolerant, result.credit, response_ms=1000), updates)
            t1 = time.perf_counter()
            seen = db.answers_of(student.token)["item"].tolist()
            path = quiz.next_practice_item(pool, db.cards_of(student.token), seen, time.time(), rng).path
            load_image(data / path)
            t2 = time.perf_counter()
            commit_t.append(t1 - t0)
            next_t.append(t2 - t1)
            total_t.append(t2 - t0)
    print(f"database: {db.dialect} ({students} students x {answers} answers, {db.count_answers(code)} stored)")
    print(f"commit (score + FSRS + store)      {pct(commit_t)}")
    print(f"next item (choose + load image)    {pct(next_t)}")
    print(f"answer -> next item                {pct(total_t)}")
    db.erase_class(code)
    db.close()
    if reveal:
        reveal_bench(pool, data, reveal)


def reveal_bench(pool, data: Path, n: int) -> None:
    import torch

    from bmteach.explain import gradcam
    from bmteach.images import load_image
    from bmteach.infer import Predictor
    from bmteach.storage import DEMO_RUN

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    t = time.perf_counter()
    model = Predictor.from_run(DEMO_RUN, device="cpu")
    print(f"demo model loaded in {time.perf_counter() - t:.2f} s (once per process)")
    rng = np.random.default_rng(1)
    times = []
    for i in rng.choice(len(pool), size=n, replace=False):
        item = pool.iloc[int(i)]
        t0 = time.perf_counter()
        x = model.preprocess([load_image(data / item["path"])])
        net = model.model(int(item["fold"]))
        gradcam(net, x, model.classes.index(item["model"]))
        other = "MYB" if item["expert"] != "MYB" else "MMZ"
        gradcam(net, x, model.classes.index(item["expert"]), versus=model.classes.index(other))
        times.append(time.perf_counter() - t0)
    print(f"reveal (Grad-CAM + contrast map)   {pct(times)}")


def apptest_bench(db_url: str, rounds: int) -> None:
    from streamlit.testing.v1 import AppTest

    from bmteach.store import Store

    os.environ["BMTEACH_DB_URL"] = db_url
    db = Store(db_url)
    code = db.create_class("apptest bench")
    student = db.join(code, "page-bench")
    at = AppTest.from_file(str(REPO / "pages" / "2_Quiz.py"), default_timeout=120)
    at.query_params["t"] = student.token
    t = time.perf_counter()
    at.run()
    print(f"Quiz page first run (model, pool, caches): {time.perf_counter() - t:.2f} s")
    rng = np.random.default_rng(2)
    answer_t, next_t = [], []
    from bmteach.classes import ABBRS
    for n in range(rounds + 1):  # round 0 warms up: the first reveal loads torch and the five fold models
        if n == 1:
            print(f"page: first Answer (loads the models) {answer_t[0]:.2f} s; first Next {next_t[0]:.2f} s")
            answer_t, next_t = [], []
        box = next(s for s in at.selectbox if s.label == "Your answer")
        box.select(str(rng.choice(ABBRS)))
        button = next(b for b in at.button if b.label == "Answer")
        t0 = time.perf_counter()
        button.click().run()
        answer_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        next(b for b in at.button if b.label == "Next item").click().run()
        next_t.append(time.perf_counter() - t0)
        assert not at.exception, [e.value for e in at.exception]
    print(f"page: Answer -> reveal drawn        {pct(answer_t)}")
    print(f"page: Next item -> next cell drawn  {pct(next_t)}")
    print(f"answers stored: {len(db.answers_of(student.token))} of {rounds + 1}")
    db.erase_class(code)
    db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=5)
    parser.add_argument("--answers", type=int, default=40, help="answers per student")
    parser.add_argument("--reveal", type=int, default=20, help="reveal maps to time (0: skip)")
    parser.add_argument("--apptest", type=int, default=0, help="rounds through the Quiz page with AppTest")
    parser.add_argument("--db-url", default=None, help="default: SQLite in a temporary folder")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-quiz-")
    db_url = args.db_url or f"sqlite:///{tmp}/quiz.sqlite"
    library_bench(db_url, args.students, args.answers, args.reveal)
    if args.apptest:
        apptest_bench(db_url, args.apptest)


if __name__ == "__main__":
    main()
