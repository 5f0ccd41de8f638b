"""The quiz database: classes, students, answers, exams and practice cards, on SQLAlchemy Core.

SQLite (WAL mode) at BMTEACH_HOME/quiz.sqlite by default; `BMTEACH_DB_URL=postgresql+psycopg://...` for a
lecture hall served by several app processes behind one database. Rules the quiz relies on:
- an answer carries a client-side attempt id, stored at most once (insert-if-absent), so a double click, a rerun
  or a reconnect never counts twice; `record_answer` commits before it returns, i.e. before any feedback;
- a student is a random token (kept in the page URL) plus a pseudonym unique within a class; every student
  query takes that token, so no student reads another's answers;
- the schema is versioned (table schema_version); `MIGRATIONS` run at start, idempotent, one process at a time
  (a file lock beside an SQLite file, an advisory lock on PostgreSQL).
"""
from __future__ import annotations

import fcntl
import json
import os
import secrets
import string
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
from sqlalchemy import (Boolean, Column, Float, Integer, MetaData, PrimaryKeyConstraint, String, Table, Text,
                        UniqueConstraint, create_engine, delete, event, func, select, text, update)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from bmteach.errors import UserError
from bmteach.storage import home

DB_URL_ENV = "BMTEACH_DB_URL"
SQLITE_NAME = "quiz.sqlite"
BUSY_TIMEOUT_MS = 30_000   # a writer waits this long for another (30 students answering at once queue up)
MIGRATION_LOCK_KEY = 0x626D7465  # "bmte": PostgreSQL advisory lock id serialising migrations
NAME_MAX = 40
MODES = ("practice", "exam", "beat", "contested")

metadata = MetaData()

schema_version = Table(
    "schema_version", metadata,
    Column("version", Integer, primary_key=True),
    Column("applied", Float, nullable=False),
)
classes_table = Table(
    "classes", metadata,
    Column("code", String(32), primary_key=True),
    Column("title", String(120), nullable=False, default=""),
    Column("created", Float, nullable=False),
)
students = Table(
    "students", metadata,
    Column("token", String(64), primary_key=True),
    Column("pseudonym", String(NAME_MAX), nullable=False),
    Column("class_code", String(32), nullable=False, index=True),
    Column("created", Float, nullable=False),
    UniqueConstraint("class_code", "pseudonym", name="uq_student_name"),
)
answers = Table(
    "answers", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("attempt_id", String(64), nullable=False, unique=True),
    Column("token", String(64), nullable=False, index=True),
    Column("class_code", String(32), nullable=False, index=True),
    Column("item", String(512), nullable=False),
    Column("expert", String(8), nullable=False),
    Column("chosen", String(8), nullable=False),
    Column("model", String(8), nullable=False),
    Column("model_confidence", Float),
    Column("strict", Boolean, nullable=False),
    Column("tolerant", Boolean, nullable=False),
    Column("credit", Float, nullable=False),
    Column("response_ms", Integer),
    Column("mode", String(16), nullable=False),
    Column("exam_code", String(16), index=True),
    Column("created", Float, nullable=False),
)
exams = Table(
    "exams", metadata,
    Column("code", String(16), primary_key=True),
    Column("class_code", String(32), nullable=False, index=True),
    Column("title", String(120), nullable=False, default=""),
    Column("items", Text, nullable=False),           # JSON list of item paths, in the order shown
    Column("time_limit_s", Integer),                  # None: no limit
    Column("is_open", Boolean, nullable=False),
    Column("created", Float, nullable=False),
)
exam_starts = Table(
    "exam_starts", metadata,
    Column("token", String(64), nullable=False),
    Column("exam_code", String(16), nullable=False),
    Column("started", Float, nullable=False),
    PrimaryKeyConstraint("token", "exam_code"),
)
cards = Table(
    "cards", metadata,
    Column("token", String(64), nullable=False),
    Column("concept", String(16), nullable=False),   # a class ("MYB") or a confusable pair ("MYB/MMZ")
    Column("card", Text, nullable=False),            # fsrs Card.to_json()
    Column("due", Float, nullable=False),
    Column("difficulty", Float),
    Column("reviews", Integer, nullable=False, default=0),
    Column("lapses", Integer, nullable=False, default=0),
    PrimaryKeyConstraint("token", "concept"),
)


# --- migrations: a list, each run once, in order ----------------------------------------------------------

def _v1_create_tables(conn) -> None:
    """Version 1: every table above (checkfirst, so a half-applied start is finished, not repeated)."""
    metadata.create_all(conn, checkfirst=True)


MIGRATIONS = [_v1_create_tables]
SCHEMA_VERSION = len(MIGRATIONS)


# --- records --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Student:
    token: str
    pseudonym: str
    class_code: str


@dataclass
class Answer:
    """One answered item. `attempt_id` is made when the item is shown (quiz.new_attempt_id)."""
    attempt_id: str
    token: str
    item: str
    expert: str
    chosen: str
    model: str
    strict: bool
    tolerant: bool
    credit: float
    mode: str = "practice"
    model_confidence: float | None = None
    response_ms: int | None = None
    exam_code: str | None = None
    created: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Exam:
    code: str
    class_code: str
    title: str
    items: list
    time_limit_s: int | None
    is_open: bool
    created: float


# --- the store ------------------------------------------------------------------------------------------

def database_url() -> str:
    """$BMTEACH_DB_URL, else SQLite at BMTEACH_HOME/quiz.sqlite."""
    return os.environ.get(DB_URL_ENV, "").strip() or f"sqlite:///{home() / SQLITE_NAME}"


def _setup_sqlite(engine: Engine) -> None:
    """WAL (readers never block the writer), a generous busy timeout, and BEGIN IMMEDIATE for writes so two
    writers queue up instead of failing on a read-to-write lock upgrade."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # SQLAlchemy's begin event below emits BEGIN itself
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable against app crashes, fast commits
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        immediate = conn.get_execution_options().get("bm_write")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class Store:
    """The quiz database. One per process (ui caches it); thread-safe (a connection per call from a pool)."""

    def __init__(self, url: str | None = None):
        self.url = url or database_url()
        self.engine = _make_engine(self.url)
        self.dialect = self.engine.dialect.name
        self._writer = self.engine.execution_options(bm_write=True)
        self.migrate()

    def close(self) -> None:
        self.engine.dispose()

    # -- transactions --

    @contextmanager
    def _write(self):
        with self._writer.begin() as conn:
            yield conn

    @contextmanager
    def _read(self):
        with self.engine.connect() as conn:
            yield conn

    def _insert(self, table):
        """An INSERT that can do nothing or update on conflict, in this database's dialect."""
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

    # -- schema --

    def migrate(self) -> int:
        """Bring the schema to SCHEMA_VERSION; safe when several processes start at once. Returns the version."""
        with self._migration_lock():
            with self._write() as conn:
                if self.dialect == "postgresql":  # held until this transaction ends
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
                schema_version.create(conn, checkfirst=True)
                done = set(conn.execute(select(schema_version.c.version)).scalars())
                for version, step in enumerate(MIGRATIONS, start=1):
                    if version not in done:
                        step(conn)
                        conn.execute(schema_version.insert().values(version=version, applied=time.time()))
        return self.schema_version()

    @contextmanager
    def _migration_lock(self):
        """A file lock beside an SQLite database file (PostgreSQL uses its advisory lock instead)."""
        path = self.engine.url.database if self.dialect == "sqlite" else None
        if not path or path == ":memory:":
            yield
            return
        with open(f"{path}.migrate.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def schema_version(self) -> int:
        with self._read() as conn:
            return int(conn.execute(select(func.max(schema_version.c.version))).scalar() or 0)

    # -- classes and students --

    def create_class(self, title: str = "", code: str | None = None) -> str:
        """A new class; returns its code (6 letters/digits unless given)."""
        code = clean_code(code) if code else _random_code(6)
        with self._write() as conn:
            stored = conn.execute(self._insert(classes_table).values(code=code, title=title.strip()[:120],
                                                                       created=time.time())
                                  .on_conflict_do_nothing(index_elements=["code"])
                                  .returning(classes_table.c.code)).first()
        if stored is None:
            raise UserError(f"A class with the code {code} exists already.")
        return code

    def class_exists(self, code: str) -> bool:
        with self._read() as conn:
            return conn.execute(select(classes_table.c.code).where(classes_table.c.code == code)).first() is not None

    def list_classes(self) -> pd.DataFrame:
        with self._read() as conn:
            return _frame(conn.execute(select(classes_table).order_by(classes_table.c.created)))

    def join(self, class_code: str, pseudonym: str) -> Student:
        """A new student in a class. The pseudonym must be new in that class: a returning student continues
        from the link (token) in their URL, so knowing a name is never enough to read someone's answers."""
        code, name = clean_code(class_code), clean_pseudonym(pseudonym)
        if not self.class_exists(code):
            raise UserError(f"There is no class with the code {code}: check it with your teacher.")
        token = secrets.token_urlsafe(18)
        try:
            with self._write() as conn:
                conn.execute(students.insert().values(token=token, pseudonym=name, class_code=code,
                                                      created=time.time()))
        except IntegrityError:
            raise UserError(f"The name {name!r} is already taken in class {code}: pick another one, or open "
                            "the link you joined with to continue.") from None
        return Student(token, name, code)

    def student(self, token: str | None) -> Student | None:
        """The student holding this token, or None (unknown, malformed or erased)."""
        if not token or len(token) > 64:
            return None
        with self._read() as conn:
            row = conn.execute(select(students).where(students.c.token == token)).first()
        return Student(row.token, row.pseudonym, row.class_code) if row else None

    def class_students(self, class_code: str) -> pd.DataFrame:
        """Teacher view: pseudonyms and join times (tokens are never shown)."""
        with self._read() as conn:
            return _frame(conn.execute(select(students.c.pseudonym, students.c.created)
                                       .where(students.c.class_code == class_code)
                                       .order_by(students.c.created)))

    # -- answers --

    def record_answer(self, answer: Answer, card_updates: dict[str, dict] | None = None) -> bool:
        """Store an answer (and the practice cards it moves) in one committed transaction. Returns False, and
        changes nothing, when this attempt id was stored before (a double click, a rerun, a reconnect)."""
        if answer.mode not in MODES:
            raise ValueError(f"unknown mode {answer.mode!r}")
        student = self.student(answer.token)
        if student is None:
            raise UserError("This quiz link is no longer valid (the class may have been erased): join again.")
        row = asdict(answer) | {"class_code": student.class_code,
                                "strict": bool(answer.strict), "tolerant": bool(answer.tolerant)}
        with self._write() as conn:
            # RETURNING, not rowcount: drivers disagree on rowcount for an insert that did nothing
            stored = conn.execute(self._insert(answers).values(**row)
                                  .on_conflict_do_nothing(index_elements=["attempt_id"])
                                  .returning(answers.c.id)).first()
            if stored is None:
                return False
            for concept, card in (card_updates or {}).items():
                self._put_card(conn, answer.token, concept, card)
        return True

    def answers_of(self, token: str, mode: str | None = None, exam_code: str | None = None) -> pd.DataFrame:
        """One student's own answers, oldest first."""
        query = select(answers).where(answers.c.token == token)
        if mode:
            query = query.where(answers.c.mode == mode)
        if exam_code:
            query = query.where(answers.c.exam_code == exam_code)
        with self._read() as conn:
            return _frame(conn.execute(query.order_by(answers.c.id)), answers)

    def class_answers(self, class_code: str, since_id: int = 0) -> pd.DataFrame:
        """Teacher view: every answer of a class with the student's pseudonym (no tokens), oldest first."""
        cols = [c for c in answers.c if c.name != "token"] + [students.c.pseudonym]
        query = (select(*cols).select_from(answers.join(students, answers.c.token == students.c.token))
                 .where(answers.c.class_code == class_code, answers.c.id > since_id).order_by(answers.c.id))
        with self._read() as conn:
            return _frame(conn.execute(query), None, [c.name for c in cols])

    def count_answers(self, class_code: str | None = None) -> int:
        query = select(func.count()).select_from(answers)
        if class_code:
            query = query.where(answers.c.class_code == class_code)
        with self._read() as conn:
            return int(conn.execute(query).scalar())

    # -- practice cards --

    def _put_card(self, conn, token: str, concept: str, card: dict) -> None:
        values = dict(token=token, concept=concept, card=card["card"], due=card["due"],
                      difficulty=card.get("difficulty"), reviews=card.get("reviews", 0), lapses=card.get("lapses", 0))
        stmt = self._insert(cards).values(**values)
        conn.execute(stmt.on_conflict_do_update(index_elements=["token", "concept"],
                                                set_={k: stmt.excluded[k] for k in values if k not in ("token", "concept")}))

    def cards_of(self, token: str) -> pd.DataFrame:
        """A student's practice cards (columns concept, card, due, difficulty, reviews, lapses)."""
        with self._read() as conn:
            return _frame(conn.execute(select(cards).where(cards.c.token == token)), cards)

    # -- exams --

    def create_exam(self, class_code: str, items: list[str], title: str = "", time_limit_s: int | None = None) -> str:
        if not items:
            raise UserError("An exam needs at least one item.")
        if not self.class_exists(class_code):
            raise UserError(f"There is no class with the code {class_code}.")
        code = _random_code(6)
        with self._write() as conn:
            conn.execute(exams.insert().values(code=code, class_code=class_code, title=title.strip()[:120],
                                               items=json.dumps(list(items)), is_open=True, created=time.time(),
                                               time_limit_s=int(time_limit_s) if time_limit_s else None))
        return code

    def exam(self, code: str | None) -> Exam | None:
        if not code:
            return None
        with self._read() as conn:
            row = conn.execute(select(exams).where(exams.c.code == clean_code(code))).first()
        if row is None:
            return None
        return Exam(row.code, row.class_code, row.title, json.loads(row.items), row.time_limit_s,
                    bool(row.is_open), row.created)

    def class_exams(self, class_code: str) -> list[Exam]:
        with self._read() as conn:
            codes = conn.execute(select(exams.c.code).where(exams.c.class_code == class_code)
                                 .order_by(exams.c.created)).scalars().all()
        return [self.exam(c) for c in codes]

    def set_exam_open(self, code: str, is_open: bool) -> None:
        with self._write() as conn:
            conn.execute(update(exams).where(exams.c.code == code).values(is_open=bool(is_open)))

    def exam_started(self, token: str, code: str) -> float | None:
        """When this student started this exam, or None when not yet."""
        with self._read() as conn:
            value = conn.execute(select(exam_starts.c.started).where(
                exam_starts.c.token == token, exam_starts.c.exam_code == code)).scalar()
        return None if value is None else float(value)

    def start_exam(self, token: str, code: str, now: float | None = None) -> float:
        """When this student started this exam (the first call sets it; later calls return the same time)."""
        with self._write() as conn:
            conn.execute(self._insert(exam_starts).values(token=token, exam_code=code, started=now or time.time())
                         .on_conflict_do_nothing(index_elements=["token", "exam_code"]))
            return float(conn.execute(select(exam_starts.c.started).where(
                exam_starts.c.token == token, exam_starts.c.exam_code == code)).scalar())

    # -- erasing --

    def erase_class(self, class_code: str) -> int:
        """Delete a class and everything of its students (answers, cards, exams). Returns answers deleted."""
        with self._write() as conn:
            tokens = select(students.c.token).where(students.c.class_code == class_code).scalar_subquery()
            n = conn.execute(delete(answers).where(answers.c.class_code == class_code)).rowcount
            conn.execute(delete(cards).where(cards.c.token.in_(tokens)))
            conn.execute(delete(exam_starts).where(exam_starts.c.token.in_(tokens)))
            conn.execute(delete(exams).where(exams.c.class_code == class_code))
            conn.execute(delete(students).where(students.c.class_code == class_code))
            conn.execute(delete(classes_table).where(classes_table.c.code == class_code))
        return int(n)


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        # 30 threads answering at once: enough pooled connections that none waits for the pool
        engine = create_engine(url, pool_size=10, max_overflow=30, pool_timeout=60)
        _setup_sqlite(engine)
        return engine
    if url.startswith("postgresql"):
        return create_engine(url, pool_size=5, max_overflow=30, pool_timeout=60, pool_pre_ping=True)
    raise UserError(f"{DB_URL_ENV} must be an sqlite:/// or postgresql+psycopg:// URL, not {url.split(':')[0]}.")


def _frame(result, table: Table | None = None, columns: list[str] | None = None) -> pd.DataFrame:
    """A result as a DataFrame that keeps its columns even when empty."""
    names = columns or ([c.name for c in table.c] if table is not None else list(result.keys()))
    return pd.DataFrame(result.fetchall(), columns=names)


_CODE_ALPHABET = string.ascii_uppercase.replace("O", "").replace("I", "") + "23456789"
_shared: dict[str, Store] = {}
_shared_lock = threading.Lock()


def _random_code(n: int) -> str:
    return "".join(secrets.choice(_CODE_ALPHABET) for _ in range(n))


def clean_code(code: str) -> str:
    """Class and exam codes: case-insensitive letters, digits and dashes."""
    code = (code or "").strip().upper()
    if not code or len(code) > 32 or not all(c.isalnum() or c == "-" for c in code):
        raise UserError("A code is 1-32 letters, digits or dashes.")
    return code


def clean_pseudonym(name: str) -> str:
    name = " ".join((name or "").split())
    if not name:
        raise UserError("Pick a pseudonym (any name your teacher will recognise; not your real name if you prefer).")
    if len(name) > NAME_MAX:
        raise UserError(f"A pseudonym has at most {NAME_MAX} characters.")
    return name


def open_store(url: str | None = None) -> Store:
    """One Store per URL per process (engines hold connection pools)."""
    url = url or database_url()
    with _shared_lock:
        if url not in _shared:
            try:
                _shared[url] = Store(url)
            except (SQLAlchemyError, OSError) as exc:  # a read-only or full disk, an unreachable server
                where = url.removeprefix("sqlite:///") if url.startswith("sqlite:") else "on its server"
                reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
                raise UserError(f"The quiz database {where} cannot be opened ({reason}).") from None
        return _shared[url]
