"""The quiz database on SQLite (WAL file) and on a real PostgreSQL server started by the `postgres_url` fixture:
nothing lost, nothing doubled, students see only their own answers, the schema migrates once."""
from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import select, text

from bmteach import store as store_mod
from bmteach.errors import UserError
from bmteach.store import SCHEMA_VERSION, Answer, Store, metadata, schema_version

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path):
    """A fresh, empty database of each kind; the PostgreSQL one is emptied again after the test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'quiz.sqlite'}"
        return
    url = request.getfixturevalue("postgres_url")
    yield url
    cleaner = Store(url)
    metadata.drop_all(cleaner.engine)
    cleaner.close()


@pytest.fixture
def store(db_url):
    s = Store(db_url)
    yield s
    s.close()


def answer(token: str, attempt: str, item: str = "MMZ/a.jpg", expert="MMZ", chosen="MYB", **kw) -> Answer:
    return Answer(attempt_id=attempt, token=token, item=item, expert=expert, chosen=chosen, model="MMZ",
                  strict=expert == chosen, tolerant=True, credit=1.0 if expert == chosen else 0.5, **kw)


def test_schema_is_migrated_once_and_migrate_is_idempotent(store):
    assert store.schema_version() == SCHEMA_VERSION
    assert store.migrate() == SCHEMA_VERSION
    with store.engine.connect() as conn:
        versions = conn.execute(select(schema_version.c.version)).scalars().all()
    assert sorted(versions) == list(range(1, SCHEMA_VERSION + 1))


def test_several_processes_starting_at_once_migrate_once(db_url):
    """Eight stores created at the same moment on an empty database (each its own engine, as separate app
    processes would): none fails and every version is recorded exactly once."""
    errors, made = [], []
    barrier = threading.Barrier(8)

    def start():
        barrier.wait()
        try:
            made.append(Store(db_url))
        except Exception as exc:  # noqa: BLE001 - the test reports any failure
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    with made[0].engine.connect() as conn:
        versions = conn.execute(select(schema_version.c.version)).scalars().all()
    assert sorted(versions) == list(range(1, SCHEMA_VERSION + 1))
    for s in made:
        s.close()


def test_separate_processes_starting_at_once_migrate_once(db_url):
    """Four Python processes open the same empty database at the same moment, as app servers would."""
    import subprocess
    import sys

    from bmteach.storage import REPO_ROOT

    code = f"from bmteach.store import Store; Store({db_url!r}).close()"
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    errors = [p.communicate(timeout=120)[1] for p in procs if p.wait(timeout=120) != 0]
    assert not errors, errors[0][-500:]
    s = Store(db_url)
    with s.engine.connect() as conn:
        versions = conn.execute(select(schema_version.c.version)).scalars().all()
    s.close()
    assert sorted(versions) == list(range(1, SCHEMA_VERSION + 1))


def test_sqlite_runs_in_wal_mode(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'q.sqlite'}")
    with s.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    s.close()


def test_default_database_is_sqlite_under_bmteach_home(fresh_home, monkeypatch):
    monkeypatch.delenv(store_mod.DB_URL_ENV, raising=False)
    assert store_mod.database_url() == f"sqlite:///{fresh_home.resolve() / 'quiz.sqlite'}"
    monkeypatch.setenv(store_mod.DB_URL_ENV, "postgresql+psycopg://u@/db?host=/tmp")
    assert store_mod.database_url().startswith("postgresql+psycopg://")
    with pytest.raises(UserError, match="BMTEACH_DB_URL"):
        Store("mysql://nobody@nowhere/db")


def test_joining_needs_an_existing_class_and_a_new_pseudonym(store):
    with pytest.raises(UserError, match="no class"):
        store.join("NOPE", "ann")
    code = store.create_class("Haematology 1")
    ann = store.join(code.lower(), "  ann  ")  # codes are case-insensitive, names trimmed
    assert ann.class_code == code and ann.pseudonym == "ann" and len(ann.token) >= 20
    with pytest.raises(UserError, match="already taken"):
        store.join(code, "ann")
    assert store.student(ann.token) == ann
    assert store.student("not-a-token") is None and store.student("") is None and store.student("x" * 500) is None
    with pytest.raises(UserError):
        store.create_class(code=code)


def test_an_attempt_is_stored_once_and_its_cards_move_once(store):
    code = store.create_class()
    ann = store.join(code, "ann")
    first = store.record_answer(answer(ann.token, "att-1"), {"MMZ": {"card": "{\"v\": 1}", "due": 10.0}})
    again = store.record_answer(answer(ann.token, "att-1"), {"MMZ": {"card": "{\"v\": 2}", "due": 20.0}})
    assert (first, again) == (True, False)
    assert len(store.answers_of(ann.token)) == 1
    cards = store.cards_of(ann.token)
    assert cards.set_index("concept").loc["MMZ", "card"] == "{\"v\": 1}"
    store.record_answer(answer(ann.token, "att-2"), {"MMZ": {"card": "{\"v\": 3}", "due": 30.0, "lapses": 1}})
    row = store.cards_of(ann.token).set_index("concept").loc["MMZ"]
    assert row["card"] == "{\"v\": 3}" and row["due"] == 30.0 and row["lapses"] == 1


def test_students_read_only_their_own_answers(store):
    code = store.create_class()
    ann, bob = store.join(code, "ann"), store.join(code, "bob")
    store.record_answer(answer(ann.token, "a1"))
    store.record_answer(answer(bob.token, "b1", expert="MYB"))
    store.record_answer(answer(bob.token, "b2", mode="exam", exam_code="X1"))
    assert store.answers_of(ann.token)["attempt_id"].tolist() == ["a1"]
    assert store.answers_of(bob.token)["attempt_id"].tolist() == ["b1", "b2"]
    assert store.answers_of(bob.token, mode="exam")["attempt_id"].tolist() == ["b2"]
    teacher = store.class_answers(code)
    assert "token" not in teacher.columns and sorted(teacher["pseudonym"]) == ["ann", "bob", "bob"]
    with pytest.raises(UserError, match="no longer valid"):
        store.record_answer(answer("forged-token", "f1"))


def test_answers_survive_a_restart(db_url):
    s = Store(db_url)
    code = s.create_class()
    ann = s.join(code, "ann")
    s.record_answer(answer(ann.token, "a1", response_ms=1234))
    s.close()
    again = Store(db_url)  # a new engine on the same file / server, as after an app restart
    assert again.student(ann.token) == ann
    rows = again.answers_of(ann.token)
    assert rows["attempt_id"].tolist() == ["a1"] and int(rows["response_ms"].iloc[0]) == 1234
    assert bool(rows["tolerant"].iloc[0]) and not bool(rows["strict"].iloc[0])
    again.close()


def test_thirty_students_answering_at_once_lose_nothing_and_double_nothing(store):
    """30 threads, one student each, 20 answers each, every answer sent twice (a double click): 600 stored."""
    code = store.create_class()
    people = [store.join(code, f"s{i:02d}") for i in range(30)]
    errors = []
    barrier = threading.Barrier(30)

    def student(i: int):
        barrier.wait()
        try:
            for n in range(20):
                a = answer(people[i].token, f"{i}-{n}", item=f"MMZ/{n}.jpg")
                cards = {"MMZ": {"card": "{}", "due": float(n)}}
                store.record_answer(a, cards)
                store.record_answer(a, cards)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    start = time.monotonic()
    threads = [threading.Thread(target=student, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors[:3]
    assert time.monotonic() - start < 300
    rows = store.class_answers(code)
    assert len(rows) == 600 and rows["attempt_id"].is_unique
    assert set(rows["attempt_id"]) == {f"{i}-{n}" for i in range(30) for n in range(20)}
    assert store.count_answers(code) == 600


def test_exams_open_close_and_start_once(store):
    code = store.create_class()
    ann = store.join(code, "ann")
    with pytest.raises(UserError):
        store.create_exam(code, [])
    exam_code = store.create_exam(code, ["A/1.jpg", "B/2.jpg"], title="Week 1", time_limit_s=600)
    exam = store.exam(exam_code.lower())
    assert exam.items == ["A/1.jpg", "B/2.jpg"] and exam.is_open and exam.time_limit_s == 600
    store.set_exam_open(exam_code, False)
    assert not store.exam(exam_code).is_open
    assert [e.code for e in store.class_exams(code)] == [exam_code]
    assert store.exam_started(ann.token, exam_code) is None
    t0 = store.start_exam(ann.token, exam_code, now=100.0)
    assert store.exam_started(ann.token, exam_code) == 100.0
    assert t0 == 100.0 and store.start_exam(ann.token, exam_code, now=200.0) == 100.0
    assert store.exam("NOSUCH") is None


def test_erasing_a_class_removes_all_of_it_and_nothing_else(store):
    a, b = store.create_class(), store.create_class()
    ann, bob = store.join(a, "ann"), store.join(b, "bob")
    store.record_answer(answer(ann.token, "a1"), {"MMZ": {"card": "{}", "due": 1.0}})
    store.record_answer(answer(bob.token, "b1"), {"MMZ": {"card": "{}", "due": 1.0}})
    exam = store.create_exam(a, ["A/1.jpg"])
    store.start_exam(ann.token, exam)
    assert store.erase_class(a) == 1
    assert not store.class_exists(a) and store.student(ann.token) is None and store.exam(exam) is None
    assert store.answers_of(ann.token).empty and store.cards_of(ann.token).empty
    assert store.answers_of(bob.token)["attempt_id"].tolist() == ["b1"] and len(store.cards_of(bob.token)) == 1
