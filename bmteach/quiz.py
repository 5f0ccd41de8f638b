"""The quiz without Streamlit: the item pool, scoring, feedback, practice scheduling, exams and result tables.

Items are the active data set's images that the active run predicted out of fold: the model's answer on an
item comes from the fold model that never trained on it (runs.read_oof). Students are scored the way the paper
scores the network: strict (the expert's class) and tolerant (a tolerated neighbour, assets/tolerance.csv);
a near miss (a tolerated pair or the next stage along a maturation chain, e.g. MYB for MMZ) earns half credit.

Practice schedules *concepts* with the maintained `fsrs` package: a class ("MYB") or a confusable pair
("MYB/MMZ", created the first time a student confuses the two). Correct -> Good, near miss -> Hard,
wrong -> Again. The next item is a not-yet-seen image of the most confused concept that is due.
"""
from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
from fsrs import Card, Rating, Scheduler

from bmteach.classes import ABBRS, BY_ABBR, LINEAGES, class_name, index_of, is_tolerated, tolerance_set
from bmteach.metrics import confusion_counts, scores_from_counts

CONTESTED_CONFIDENCE = 0.8   # the model disagrees with the expert at least this confidently: "experts disagree?"
UNSURE_CONFIDENCE = 0.5      # the model's top class below this: unsure (a beat-the-model item)
NEAR_MISS_CREDIT = 0.5
EXPLORE = 0.2                # share of practice items that open a class the student has not practised yet
SCHEDULER = Scheduler(enable_fuzzing=False)  # deterministic intervals: the same answers give the same plan


# --- the item pool --------------------------------------------------------------------------------------

def read_predictions(run_dir: str | Path) -> pd.DataFrame | None:
    """The run's out-of-fold predictions (path, true, pred, fold, prob_<ABBR>...), or None when there are none."""
    from bmteach import runs
    return runs.read_oof(Path(run_dir))


def build_pool(oof: pd.DataFrame, data_items: Iterable[tuple[str, str]] | None = None) -> pd.DataFrame:
    """One row per quiz item: path, expert, model, confidence (the model's top probability), expert_prob
    (the model's probability for the expert's class), fold, contested, unsure, and the prob_<ABBR> columns.
    With `data_items` ((relpath, abbr) of the active data set), only images present there are kept."""
    probs_cols = [f"prob_{a}" for a in ABBRS if f"prob_{a}" in oof.columns]
    pool = oof.rename(columns={"true": "expert", "pred": "model"}).copy()
    if data_items is not None:
        present = dict(data_items)
        pool = pool[pool["path"].isin(present.keys())].copy()
        pool["expert"] = pool["path"].map(present)
    pool = pool[pool["expert"].isin(ABBRS) & pool["model"].isin(ABBRS)]
    probs = pool[probs_cols].to_numpy(dtype=float)
    col = {c[len("prob_"):]: i for i, c in enumerate(probs_cols)}
    rows = np.arange(len(pool))
    pool["confidence"] = probs[rows, [col[m] for m in pool["model"]]] if len(pool) else []
    pool["expert_prob"] = probs[rows, [col[e] for e in pool["expert"]]] if len(pool) else []
    wrong = pool["model"] != pool["expert"]
    pool["contested"] = wrong & (pool["confidence"] >= CONTESTED_CONFIDENCE)
    pool["unsure"] = pool["confidence"] < UNSURE_CONFIDENCE
    pool["fold"] = pool["fold"].astype(int)
    return pool.reset_index(drop=True)


def item_row(pool: pd.DataFrame, path: str) -> dict:
    """One item as a dict (raises KeyError for a path not in the pool)."""
    match = pool.index[pool["path"] == path]
    if len(match) == 0:
        raise KeyError(path)
    return pool.loc[match[0]].to_dict()


def beat_the_model_items(pool: pd.DataFrame) -> list[str]:
    """Items the model got wrong (not confidently: those are contested) or was unsure about."""
    wrong = (pool["model"] != pool["expert"]) & ~pool["contested"]
    return pool.loc[wrong | pool["unsure"], "path"].tolist()


def contested_items(pool: pd.DataFrame) -> list[str]:
    """Items where the model confidently disagrees with the expert: label noise, or a real borderline cell?"""
    return pool.loc[pool["contested"], "path"].tolist()


# --- scoring and feedback -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Score:
    strict: bool
    tolerant: bool
    near_miss: bool   # wrong, but a tolerated neighbour or the next stage along a maturation chain
    credit: float     # 1, NEAR_MISS_CREDIT or 0


def chain_neighbours(a: str, b: str) -> bool:
    """Adjacent stages of one maturation chain (e.g. MYB and MMZ)."""
    ca, cb = BY_ABBR[a], BY_ABBR[b]
    return bool(ca.chain) and ca.chain == cb.chain and abs(ca.stage - cb.stage) == 1


def score(expert: str, chosen: str, pairs: frozenset | None = None) -> Score:
    """Strict, tolerant and partial credit of one answer."""
    pairs = tolerance_set() if pairs is None else pairs
    if chosen == expert:
        return Score(True, True, False, 1.0)
    tolerant = is_tolerated(expert, chosen, pairs)
    near = tolerant or chain_neighbours(expert, chosen)
    return Score(False, tolerant, near, NEAR_MISS_CREDIT if near else 0.0)


def _stage_words(expert: str, chosen: str) -> str:
    ce, cc = BY_ABBR[expert], BY_ABBR[chosen]
    direction = "more mature" if cc.stage > ce.stage else "less mature"
    return f"one stage {direction} along the {ce.chain} chain"


def tell_apart(expert: str, chosen: str, teaching: Mapping) -> str:
    """Our teaching text on what distinguishes the expert's class from the chosen one (either direction)."""
    own = teaching[expert].tell_apart.get(chosen) if expert in teaching else None
    if own:
        return own
    other = teaching[chosen].tell_apart.get(expert) if chosen in teaching else None
    if other:
        return f"Seen from the other side: {other}"
    look = teaching[expert].look_for if expert in teaching else ()
    return f"Look for: {look[0]}" if look else ""


def feedback(expert: str, chosen: str, result: Score, teaching: Mapping) -> str:
    """A few sentences for the student, naming the feature that tells the classes apart."""
    if result.strict:
        look = teaching[expert].look_for if expert in teaching else ()
        return f"Right: {class_name(expert)}." + (f" The key sign: {look[0]}" if look else "")
    lead = f"The expert labelled this cell {class_name(expert)} ({expert}); you chose {class_name(chosen)} ({chosen})."
    if result.near_miss and chain_neighbours(expert, chosen):
        lead += f" A near miss: your answer is {_stage_words(expert, chosen)} (half credit)."
    elif result.near_miss:
        lead += " A near miss: the paper tolerates this confusion (half credit)."
    return f"{lead} {tell_apart(expert, chosen, teaching)}".strip()


def new_attempt_id() -> str:
    """Made when an item is shown; the answer to that showing is stored at most once under it."""
    return uuid.uuid4().hex


# --- practice: concepts scheduled by FSRS ---------------------------------------------------------------

def pair_concept(a: str, b: str) -> str:
    """A confusable pair as one concept name, in canonical class order (MYB/MMZ, never MMZ/MYB)."""
    first, second = sorted((a, b), key=index_of)
    return f"{first}/{second}"


def concept_classes(concept: str) -> tuple[str, ...]:
    return tuple(concept.split("/"))


def rating_for(result: Score) -> Rating:
    if result.strict:
        return Rating.Good
    return Rating.Hard if result.near_miss else Rating.Again


def _as_utc(t: float | datetime) -> datetime:
    return t if isinstance(t, datetime) else datetime.fromtimestamp(float(t), tz=timezone.utc)


def review_concepts(cards: pd.DataFrame, expert: str, chosen: str, result: Score, now: float) -> dict[str, dict]:
    """The card updates one answer causes, as store.record_answer wants them: the expert's class; the pair
    (expert, chosen) when they differ; and the student's other pairs holding the expert's class that are due."""
    known = {r["concept"]: r for r in cards.to_dict("records")} if len(cards) else {}
    concepts = [expert]
    if chosen != expert:
        concepts.append(pair_concept(expert, chosen))
    concepts += [c for c, r in known.items() if "/" in c and expert in concept_classes(c)
                 and c not in concepts and r["due"] <= now]
    rating, when = rating_for(result), _as_utc(now)
    updates = {}
    for concept in concepts:
        row = known.get(concept)
        card = Card.from_json(row["card"]) if row is not None else Card(due=when)
        card, _ = SCHEDULER.review_card(card, rating, review_datetime=when)
        updates[concept] = {"card": card.to_json(), "due": card.due.timestamp(), "difficulty": card.difficulty,
                            "reviews": int(row["reviews"]) + 1 if row is not None else 1,
                            "lapses": (int(row["lapses"]) if row is not None else 0) + (rating == Rating.Again)}
    return updates


@dataclass(frozen=True)
class Pick:
    path: str
    concept: str
    reason: str   # "due" (most confused due concept), "new" (a class not practised yet), "weakest", "random"


def practice_pool(pool: pd.DataFrame) -> pd.DataFrame:
    """Practice leaves contested items out: their label is in doubt."""
    return pool[~pool["contested"]]


def _usable(cards: pd.DataFrame, present: set[str]) -> np.ndarray:
    """Cards whose classes all have items in the pool (a boolean mask, safe on an empty table)."""
    return np.array([all(a in present for a in concept_classes(c)) for c in cards["concept"]], dtype=bool)


def _ranked_due(cards: pd.DataFrame, now: float, present: set[str]) -> list[str]:
    """Due concepts, most confused first: FSRS difficulty, then lapses, pairs before classes, longest overdue."""
    if cards is None or len(cards) == 0:
        return []
    due = cards[cards["due"] <= now].copy()
    due = due.loc[_usable(due, present)]
    due["difficulty"] = due["difficulty"].fillna(0.0).round(6)
    due["pair"] = due["concept"].str.contains("/")  # on a tie, the pair: it is the more specific confusion
    due = due.sort_values(["difficulty", "lapses", "pair", "due"], ascending=[False, False, False, True],
                          kind="stable")
    return due["concept"].tolist()


def choose_concept(cards: pd.DataFrame, now: float, present: Iterable[str], rng: np.random.Generator,
                   explore: float = EXPLORE) -> tuple[str, str]:
    """(concept, reason) for the next practice item."""
    present = set(present)
    carded = set(cards["concept"]) if cards is not None and len(cards) else set()
    new = [a for a in ABBRS if a in present and a not in carded]
    due = _ranked_due(cards, now, present)
    if new and (not due or rng.random() < explore):
        return str(rng.choice(new)), "new"
    if due:
        return due[0], "due"
    usable = cards.loc[_usable(cards, present)] if len(carded) else cards
    if len(usable):  # nothing due: keep working on the weakest concept
        weakest = usable.assign(d=usable["difficulty"].fillna(0.0)).sort_values("d", ascending=False, kind="stable")
        return str(weakest["concept"].iloc[0]), "weakest"
    return str(rng.choice(sorted(present, key=index_of))), "random"


def next_practice_item(pool: pd.DataFrame, cards: pd.DataFrame, seen: Iterable[str], now: float,
                       rng: np.random.Generator, explore: float = EXPLORE) -> Pick | None:
    """A not-yet-seen image of the most confused due concept (a seen one only when all have been seen)."""
    items = practice_pool(pool)
    if items.empty:
        return None
    concept, reason = choose_concept(cards, now, items["expert"].unique(), rng, explore)
    of_concept = items[items["expert"].isin(concept_classes(concept))]
    unseen = of_concept[~of_concept["path"].isin(set(seen))]
    candidates = unseen if len(unseen) else of_concept
    return Pick(str(candidates["path"].iloc[int(rng.integers(len(candidates)))]), concept, reason)


def next_in_set(paths: list[str], seen: Iterable[str], rng: np.random.Generator) -> str | None:
    """A random not-yet-answered item of a fixed set (beat the model, experts disagree?), None when done."""
    left = sorted(set(paths) - set(seen))
    return left[int(rng.integers(len(left)))] if left else None


# --- exams ----------------------------------------------------------------------------------------------

def exam_items(pool: pd.DataFrame, per_class: int = 2, seed: int = 0, include_contested: bool = False,
               classes: Iterable[str] | None = None) -> list[str]:
    """A fixed, class-balanced set: `per_class` images of every class (fewer where a class has fewer), shuffled."""
    rng = np.random.default_rng(seed)
    eligible = pool if include_contested else pool[~pool["contested"]]
    wanted = list(classes) if classes is not None else list(ABBRS)
    chosen = []
    for abbr in wanted:
        paths = sorted(eligible.loc[eligible["expert"] == abbr, "path"])
        if paths:
            chosen += list(rng.choice(paths, size=min(per_class, len(paths)), replace=False))
    return [str(p) for p in rng.permutation(chosen)]


@dataclass(frozen=True)
class ExamState:
    answered: int
    total: int
    next_item: str | None
    seconds_left: float | None   # None: no time limit
    finished: bool


def exam_state(items: list[str], answered_items: Iterable[str], started: float, now: float,
               time_limit_s: int | None) -> ExamState:
    """Where a student is in an exam: items in the fixed order, done when all are answered or time is up."""
    done = set(answered_items)
    left = [p for p in items if p not in done]
    seconds_left = None if not time_limit_s else max(0.0, started + time_limit_s - now)
    finished = not left or seconds_left == 0.0
    return ExamState(len(items) - len(left), len(items), None if finished else left[0], seconds_left, finished)


def exam_report(answers: pd.DataFrame, items: list[str]) -> pd.DataFrame:
    """Per exam item: the student's answer, the expert's and the model's labels and the verdicts (unanswered
    items count as wrong)."""
    got = answers.drop_duplicates("item").set_index("item") if len(answers) else None
    rows = []
    for n, path in enumerate(items, start=1):
        a = got.loc[path] if got is not None and path in got.index else None
        rows.append({"#": n, "item": path, "expert": a["expert"] if a is not None else "",
                     "your answer": a["chosen"] if a is not None else "(none)",
                     "model": a["model"] if a is not None else "",
                     "strict": bool(a["strict"]) if a is not None else False,
                     "tolerant": bool(a["tolerant"]) if a is not None else False,
                     "credit": float(a["credit"]) if a is not None else 0.0})
    return pd.DataFrame(rows)


# --- one student's results ------------------------------------------------------------------------------

def model_verdicts(answers: pd.DataFrame, pairs: frozenset | None = None) -> pd.DataFrame:
    """The answers with the model's strict/tolerant verdicts on the same items."""
    pairs = tolerance_set() if pairs is None else pairs
    out = answers.copy()
    out["model_strict"] = out["model"] == out["expert"]
    out["model_tolerant"] = [is_tolerated(e, m, pairs) for e, m in zip(out["expert"], out["model"])]
    return out


def summary(answers: pd.DataFrame, pairs: frozenset | None = None) -> dict:
    """Answers, strict/tolerant accuracy and mean credit of the student, and the model's on the same items."""
    if answers.empty:
        return {"answers": 0}
    a = model_verdicts(answers, pairs)
    return {"answers": len(a), "strict": float(a["strict"].mean()), "tolerant": float(a["tolerant"].mean()),
            "credit": float(a["credit"].mean()), "model_strict": float(a["model_strict"].mean()),
            "model_tolerant": float(a["model_tolerant"].mean())}


def _counts(answers: pd.DataFrame, column: str) -> np.ndarray:
    return confusion_counts(np.array([index_of(a) for a in answers["expert"]], dtype=int),
                            np.array([index_of(a) for a in answers[column]], dtype=int), len(ABBRS))


def confusion(answers: pd.DataFrame, column: str = "chosen") -> pd.DataFrame:
    """Counts, rows = expert's class, columns = `column` ("chosen" or "model"), over the classes that occur."""
    if answers.empty:
        return pd.DataFrame()
    counts = _counts(answers, column)
    used = [i for i in range(len(ABBRS)) if counts[i].sum() or counts[:, i].sum()]
    names = [ABBRS[i] for i in used]
    return pd.DataFrame(counts[np.ix_(used, used)], index=pd.Index(names, name="expert"),
                        columns=pd.Index(names, name=column))


def class_table(answers: pd.DataFrame) -> pd.DataFrame:
    """Per class (strict): the student's precision and recall next to the model's on the same items."""
    if answers.empty:
        return pd.DataFrame(columns=["class", "items", "you: precision", "you: recall",
                                     "model: precision", "model: recall"])
    you, model = scores_from_counts(_counts(answers, "chosen")), scores_from_counts(_counts(answers, "model"))
    rows = []
    for i, abbr in enumerate(ABBRS):
        if you.support[i] or you.predicted[i] or model.predicted[i]:
            rows.append({"class": abbr, "items": int(you.support[i]),
                         "you: precision": _round(you.precision[i]), "you: recall": _round(you.recall[i]),
                         "model: precision": _round(model.precision[i]), "model: recall": _round(model.recall[i])})
    return pd.DataFrame(rows)


def _round(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 3)


def progress(answers: pd.DataFrame, window: int = 10) -> pd.DataFrame:
    """Running accuracy over the last `window` answers (strict and tolerant), one row per answer."""
    if answers.empty:
        return pd.DataFrame(columns=["answer", "strict", "tolerant"])
    a = answers.reset_index(drop=True)
    return pd.DataFrame({"answer": np.arange(1, len(a) + 1),
                         "strict": a["strict"].astype(float).rolling(window, min_periods=1).mean(),
                         "tolerant": a["tolerant"].astype(float).rolling(window, min_periods=1).mean()})


# --- the class (teacher) --------------------------------------------------------------------------------

def first_answers(answers: pd.DataFrame) -> pd.DataFrame:
    """Each student's first answer to each item (later repeats would flatter the item statistics)."""
    return answers.drop_duplicates(["pseudonym", "item"], keep="first") if len(answers) else answers


def item_stats(answers: pd.DataFrame, min_students: int = 3) -> pd.DataFrame:
    """Per item: answers, difficulty (share strictly correct) and discrimination (the correlation between
    getting this item right and the student's score on the other items; NaN with fewer than `min_students`)."""
    cols = ["item", "expert", "model", "answers", "difficulty", "discrimination"]
    a = first_answers(answers)
    if a.empty:
        return pd.DataFrame(columns=cols)
    a = a.assign(correct=a["strict"].astype(float))
    totals = a.groupby("pseudonym")["correct"].agg(["sum", "count"])
    rows = []
    for item, g in a.groupby("item", sort=False):
        rest = (totals.loc[g["pseudonym"], "sum"].to_numpy() - g["correct"].to_numpy()) / \
            np.maximum(totals.loc[g["pseudonym"], "count"].to_numpy() - 1, 1)
        disc = float("nan")
        if len(g) >= min_students and g["correct"].std() > 0 and np.std(rest) > 0:
            disc = float(np.corrcoef(g["correct"].to_numpy(), rest)[0, 1])
        rows.append({"item": item, "expert": g["expert"].iloc[0], "model": g["model"].iloc[0], "answers": len(g),
                     "difficulty": float(g["correct"].mean()), "discrimination": disc})
    return pd.DataFrame(rows, columns=cols).sort_values(["difficulty", "answers"], ascending=[True, False])


def confused_pairs(answers: pd.DataFrame, top: int = 5) -> pd.DataFrame:
    """The most frequent confusions, both directions counted together (columns pair, a, b, count)."""
    wrong = answers[answers["expert"] != answers["chosen"]] if len(answers) else answers
    if wrong.empty:
        return pd.DataFrame(columns=["pair", "a", "b", "count"])
    pairs = [pair_concept(e, c) for e, c in zip(wrong["expert"], wrong["chosen"])]
    counts = pd.Series(pairs).value_counts(sort=False)
    out = pd.DataFrame({"pair": counts.index, "count": counts.to_numpy()})
    out["a"], out["b"] = zip(*[concept_classes(p) for p in out["pair"]])
    out["first"] = [index_of(a) for a in out["a"]]
    out = out.sort_values(["count", "first"], ascending=[False, True], kind="stable").head(top)
    return out[["pair", "a", "b", "count"]].reset_index(drop=True)


def remediation_set(pool: pd.DataFrame, a: str, b: str, n: int = 10, exclude: Iterable[str] = ()) -> list[str]:
    """n items (half of each class) that sit closest to the a/b border by the model's probabilities: the cells
    on which the two are easiest to confuse. Contested items are left out."""
    eligible = pool[~pool["contested"] & ~pool["path"].isin(set(exclude))]
    chosen = []
    for abbr, other, k in ((a, b, n - n // 2), (b, a, n // 2)):
        rows = eligible[eligible["expert"] == abbr]
        margin = (rows[f"prob_{abbr}"] - rows[f"prob_{other}"]).abs()
        chosen += rows.assign(margin=margin).sort_values(["margin", "path"])["path"].head(k).tolist()
    return chosen


def class_vs_model(answers: pd.DataFrame) -> pd.DataFrame:
    """Per expert class: the class's strict and tolerant recall next to the model's on the same items."""
    if answers.empty:
        return pd.DataFrame(columns=["class", "answers", "students: strict", "students: tolerant",
                                     "model: strict", "model: tolerant"])
    a = model_verdicts(answers)
    grouped = a.groupby("expert").agg(answers=("item", "size"), s_strict=("strict", "mean"),
                                      s_tol=("tolerant", "mean"), m_strict=("model_strict", "mean"),
                                      m_tol=("model_tolerant", "mean"))
    grouped = grouped.reindex([c for c in ABBRS if c in grouped.index])
    return pd.DataFrame({"class": grouped.index, "answers": grouped["answers"].to_numpy(),
                         "students: strict": grouped["s_strict"].round(3).to_numpy(),
                         "students: tolerant": grouped["s_tol"].round(3).to_numpy(),
                         "model: strict": grouped["m_strict"].round(3).to_numpy(),
                         "model: tolerant": grouped["m_tol"].round(3).to_numpy()})


def student_summaries(answers: pd.DataFrame) -> pd.DataFrame:
    """One row per student: answers, strict/tolerant accuracy, credit, the model's strict accuracy on the same
    items and the time of the last answer."""
    cols = ["student", "answers", "strict", "tolerant", "credit", "model: strict", "last answer"]
    if answers.empty:
        return pd.DataFrame(columns=cols)
    a = model_verdicts(answers)
    g = a.groupby("pseudonym").agg(answers=("item", "size"), strict=("strict", "mean"),
                                   tolerant=("tolerant", "mean"), credit=("credit", "mean"),
                                   model=("model_strict", "mean"), last=("created", "max"))
    out = pd.DataFrame({"student": g.index, "answers": g["answers"].to_numpy(),
                        "strict": g["strict"].round(3).to_numpy(), "tolerant": g["tolerant"].round(3).to_numpy(),
                        "credit": g["credit"].round(3).to_numpy(), "model: strict": g["model"].round(3).to_numpy(),
                        "last answer": pd.to_datetime(g["last"].to_numpy(), unit="s", utc=True)})
    return out[cols]


def confusion_points(answers: pd.DataFrame, column: str = "chosen") -> pd.DataFrame:
    """The confusion matrix in long form (expert, answer, count) for a clickable scatter of squares."""
    conf = confusion(answers, column)
    if conf.empty:
        return pd.DataFrame(columns=["expert", "answer", "count"])
    long = conf.stack().rename("count").reset_index()
    long.columns = ["expert", "answer", "count"]
    return long[long["count"] > 0].reset_index(drop=True)


def selected_cell(event) -> tuple[str, str] | None:
    """(expert, answer) of the first point of a plotly selection event (st.plotly_chart on_select), else None."""
    try:
        points = (event or {}).get("selection", {}).get("points", [])
    except AttributeError:
        return None
    for p in points:
        x, y = p.get("x"), p.get("y")
        if x in BY_ABBR and y in BY_ABBR:
            return str(y), str(x)   # x = the answer given, y = the expert's class
    return None


def cell_items(answers: pd.DataFrame, expert: str, chosen: str) -> pd.DataFrame:
    """The items behind one confusion-matrix cell: path, the model's label, how many students answered so."""
    sel = answers[(answers["expert"] == expert) & (answers["chosen"] == chosen)]
    if sel.empty:
        return pd.DataFrame(columns=["item", "model", "students"])
    g = sel.groupby("item").agg(model=("model", "first"), students=("pseudonym", "nunique")).reset_index()
    return g.sort_values(["students", "item"], ascending=[False, True]).reset_index(drop=True)


def lineage_options() -> list[str]:
    """The 21 classes grouped by lineage (the picker's order)."""
    return [c for lineage in LINEAGES for c in ABBRS if BY_ABBR[c].lineage == lineage]


def picker_label(abbr: str) -> str:
    """'granulopoiesis · MYB · Myelocyte': typing a lineage, an abbreviation or a name finds the class."""
    return f"{BY_ABBR[abbr].lineage} · {abbr} · {class_name(abbr)}"


def confusion_figure(points: pd.DataFrame, height: int = 520):
    """The confusion matrix as a scatter of squares (plotly returns selections for scatter traces, not heatmaps):
    x = the answer given, y = the expert's class, size and colour = how often."""
    import plotly.graph_objects as go

    order = [a for a in ABBRS if a in set(points["expert"]) | set(points["answer"])]
    biggest = max(int(points["count"].max()), 1) if len(points) else 1
    fig = go.Figure(go.Scatter(
        x=points["answer"], y=points["expert"], mode="markers+text", text=points["count"], name="answers",
        marker=dict(symbol="square", size=[14 + 26 * c / biggest for c in points["count"]],
                    color=points["count"], colorscale="Blues", showscale=False, line=dict(width=1, color="#555")),
        textfont=dict(size=10), hovertemplate="expert %{y}, answered %{x}: %{text}<extra></extra>"))
    fig.update_xaxes(title="answered", categoryorder="array", categoryarray=order, side="top")
    fig.update_yaxes(title="expert's class", categoryorder="array", categoryarray=order[::-1])
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10), dragmode="select")
    return fig
