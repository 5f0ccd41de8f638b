"""quiz.py: scoring against tables worked out by hand, feedback text, FSRS practice that shifts towards a weak
pair, exams, and the student/teacher tables."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from fsrs import Rating

from bmteach import quiz
from bmteach.atlas import load_teaching
from bmteach.classes import ABBRS
from bmteach.storage import DEMO_RUN

CARD_COLUMNS = ["concept", "card", "due", "difficulty", "reviews", "lapses"]
T0 = 1.8e9  # a fixed "now" (seconds since the epoch)


def fake_oof(per_class: int = 20, wrong: dict | None = None) -> pd.DataFrame:
    """An oof table: the model right with 0.9 unless `wrong` maps a path to (predicted class, confidence)."""
    rows = []
    for a in ABBRS:
        for n in range(per_class):
            path = f"{a}/{a}_{n:03d}.jpg"
            pred, conf = (wrong or {}).get(path, (a, 0.9))
            probs = {f"prob_{b}": (1 - conf) / 20 for b in ABBRS}
            probs[f"prob_{pred}"] = conf
            rows.append({"path": path, "true": a, "pred": pred, "fold": n % 5, **probs})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def pool() -> pd.DataFrame:
    wrong = {"MMZ/MMZ_000.jpg": ("MYB", 0.95), "MMZ/MMZ_001.jpg": ("MYB", 0.6), "EOS/EOS_000.jpg": ("BAS", 0.3),
             "MYB/MYB_000.jpg": ("MYB", 0.45)}
    return quiz.build_pool(fake_oof(wrong=wrong))


# --- scoring -----------------------------------------------------------------------------------------------

# expert, chosen -> strict, tolerant, near miss, credit (default tolerance pairs, worked out from
# assets/tolerance.csv and the maturation chains in assets/classes.csv)
SCORING_TABLE = [
    ("MMZ", "MMZ", True, True, False, 1.0),
    ("MMZ", "MYB", False, True, True, 0.5),    # one stage less mature, tolerated pair
    ("MYB", "MMZ", False, True, True, 0.5),
    ("MMZ", "NGS", False, False, False, 0.0),  # two stages apart
    ("NGB", "MMZ", False, True, True, 0.5),
    ("PEB", "EBO", False, True, True, 0.5),    # erythroid chain
    ("LYT", "HAC", False, True, True, 0.5),    # tolerated, though not a chain
    ("BLA", "LYI", False, False, False, 0.0),  # a "possible" pair, off by default
    ("EOS", "BAS", False, False, False, 0.0),
    ("BLA", "NGS", False, False, False, 0.0),
]


@pytest.mark.parametrize("expert,chosen,strict,tolerant,near,credit", SCORING_TABLE)
def test_scoring_matches_the_hand_worked_table(expert, chosen, strict, tolerant, near, credit):
    assert quiz.score(expert, chosen) == quiz.Score(strict, tolerant, near, credit)


def test_a_chain_neighbour_earns_partial_credit_even_without_a_tolerance_pair():
    result = quiz.score("MMZ", "MYB", pairs=frozenset())
    assert result == quiz.Score(False, False, True, 0.5)
    assert quiz.rating_for(result) == Rating.Hard
    assert quiz.rating_for(quiz.score("MMZ", "MMZ")) == Rating.Good
    assert quiz.rating_for(quiz.score("MMZ", "NGS")) == Rating.Again


def test_feedback_names_the_distinguishing_feature_from_our_teaching_text():
    teaching = load_teaching()
    text = quiz.feedback("MMZ", "MYB", quiz.score("MMZ", "MYB"), teaching)
    assert "Metamyelocyte" in text and "Myelocyte" in text and "near miss" in text
    assert "less mature" in text and "granulocytic" in text
    assert quiz.tell_apart("MMZ", "MYB", teaching) in text and len(quiz.tell_apart("MMZ", "MYB", teaching)) > 20
    right = quiz.feedback("EOS", "EOS", quiz.score("EOS", "EOS"), teaching)
    assert right.startswith("Right: Eosinophil.")
    far = quiz.feedback("EOS", "NIF", quiz.score("EOS", "NIF"), teaching)
    assert "near miss" not in far and far.strip()


# --- the pool -----------------------------------------------------------------------------------------------

def test_pool_flags_contested_and_unsure_items(pool):
    row = quiz.item_row(pool, "MMZ/MMZ_000.jpg")
    assert row["model"] == "MYB" and row["confidence"] == pytest.approx(0.95) and row["contested"]
    assert row["expert_prob"] == pytest.approx(0.05 / 20)
    assert quiz.contested_items(pool) == ["MMZ/MMZ_000.jpg"]
    beat = quiz.beat_the_model_items(pool)
    assert sorted(beat) == ["EOS/EOS_000.jpg", "MMZ/MMZ_001.jpg", "MYB/MYB_000.jpg"]


def test_pool_keeps_only_images_in_the_active_data_set():
    oof = fake_oof(per_class=2)
    items = [("MMZ/MMZ_000.jpg", "MMZ"), ("BLA/BLA_001.jpg", "BLA"), ("NEW/x.jpg", "BLA")]
    pool = quiz.build_pool(oof, items)
    assert sorted(pool["path"]) == ["BLA/BLA_001.jpg", "MMZ/MMZ_000.jpg"]


def test_demo_run_gives_a_full_pool_with_out_of_fold_answers():
    oof = quiz.read_predictions(DEMO_RUN)
    pool = quiz.build_pool(oof)
    assert len(pool) == 2100 and set(pool["fold"]) == set(range(5))
    assert 0 < pool["contested"].sum() < 200 and len(quiz.beat_the_model_items(pool)) > 50


# --- practice ----------------------------------------------------------------------------------------------

def empty_cards() -> pd.DataFrame:
    return pd.DataFrame(columns=CARD_COLUMNS)


def apply(cards: pd.DataFrame, updates: dict) -> pd.DataFrame:
    rows = {r["concept"]: r for r in cards.to_dict("records")}
    rows.update({c: {"concept": c, **u} for c, u in updates.items()})
    return pd.DataFrame(list(rows.values()), columns=CARD_COLUMNS)


def test_a_confusion_creates_a_pair_card_rated_again_and_the_class_card():
    updates = quiz.review_concepts(empty_cards(), "MMZ", "NGS", quiz.score("MMZ", "NGS"), T0)
    assert set(updates) == {"MMZ", "MMZ/NGS"}
    assert all(u["lapses"] == 1 and u["reviews"] == 1 for u in updates.values())
    assert updates["MMZ"]["due"] == pytest.approx(T0 + 60)  # FSRS's first learning step after Again
    good = quiz.review_concepts(empty_cards(), "EOS", "EOS", quiz.score("EOS", "EOS"), T0)
    assert set(good) == {"EOS"} and good["EOS"]["lapses"] == 0
    assert good["EOS"]["difficulty"] < updates["MMZ"]["difficulty"]
    assert quiz.pair_concept("MMZ", "MYB") == "MYB/MMZ" == quiz.pair_concept("MYB", "MMZ")


def test_the_most_confused_due_concept_comes_first():
    cards = empty_cards()
    for expert, chosen in [("EOS", "EOS"), ("MYB", "MYB"), ("MMZ", "NGS"), ("MMZ", "NGS")]:
        cards = apply(cards, quiz.review_concepts(cards, expert, chosen, quiz.score(expert, chosen), T0))
    ranked = quiz._ranked_due(cards, T0 + 86400, {"EOS", "MMZ", "MYB", "NGS"})
    assert ranked[:2] == ["MMZ/NGS", "MMZ"]  # two lapses each, the highest FSRS difficulty; the pair first on a tie
    concept, reason = quiz.choose_concept(cards, T0 + 86400, ["EOS", "MMZ", "MYB", "NGS"],
                                          np.random.default_rng(0), explore=0.0)
    assert (concept, reason) == ("MMZ/NGS", "due")
    # nothing due and every present class practised: the weakest concept whose classes all have items
    assert quiz.choose_concept(cards, T0 - 1, ["EOS", "MMZ", "MYB"], np.random.default_rng(0)) == ("MMZ", "weakest")
    # a class never practised is opened before anything else when nothing is due
    assert quiz.choose_concept(cards, T0 - 1, ["EOS", "MMZ", "MYB", "BLA"], np.random.default_rng(0)) == ("BLA", "new")


def simulate_practice(pool: pd.DataFrame, confuse: dict, n: int = 60, seed: int = 0) -> list[str]:
    """A student answering n practice items, 30 s apart, confusing the classes in `confuse`; the experts'
    classes of the items shown."""
    rng, cards, seen, shown, now = np.random.default_rng(seed), empty_cards(), [], [], T0
    for _ in range(n):
        pick = quiz.next_practice_item(pool, cards, seen, now, rng)
        expert = quiz.item_row(pool, pick.path)["expert"]
        chosen = confuse.get(expert, expert)
        cards = apply(cards, quiz.review_concepts(cards, expert, chosen, quiz.score(expert, chosen), now))
        seen.append(pick.path)
        shown.append(expert)
        now += 30
    return shown


def test_practice_shifts_towards_a_students_weak_pair(pool):
    """Over 60 items (seed 0), a student who swaps MYB and MMZ sees those two classes at least 20 percentage
    points more often than one who answers everything right (measured: 37% vs 10%)."""
    weak = simulate_practice(pool, {"MYB": "MMZ", "MMZ": "MYB"})
    strong = simulate_practice(pool, {})
    share = lambda shown: np.mean([s in ("MYB", "MMZ") for s in shown])  # noqa: E731
    assert share(weak) >= share(strong) + 0.20, (share(weak), share(strong))


def test_practice_shows_unseen_images_and_never_contested_ones(pool):
    shown = []
    rng = np.random.default_rng(1)
    for _ in range(40):
        shown.append(quiz.next_practice_item(pool, empty_cards(), shown, T0, rng).path)
    assert len(set(shown)) == 40 and "MMZ/MMZ_000.jpg" not in shown


def test_fixed_sets_run_out():
    rng = np.random.default_rng(0)
    assert quiz.next_in_set(["a", "b"], ["a"], rng) == "b" and quiz.next_in_set(["a"], ["a"], rng) is None


# --- exams -------------------------------------------------------------------------------------------------

def test_exam_is_class_balanced_fixed_by_seed_and_leaves_contested_out(pool):
    items = quiz.exam_items(pool, per_class=3, seed=7)
    assert items == quiz.exam_items(pool, per_class=3, seed=7) and len(items) == 63 == len(set(items))
    experts = pool.set_index("path").loc[items, "expert"]
    assert (experts.value_counts() == 3).all() and "MMZ/MMZ_000.jpg" not in items
    few = quiz.exam_items(pool, per_class=20, seed=0, classes=["MMZ"])
    assert len(few) == 19 and quiz.exam_items(pool, per_class=20, include_contested=True, classes=["MMZ"])


def test_exam_state_follows_the_fixed_order_and_the_clock():
    items = ["a", "b", "c"]
    state = quiz.exam_state(items, ["a"], started=100.0, now=160.0, time_limit_s=600)
    assert (state.answered, state.next_item, state.seconds_left, state.finished) == (1, "b", 540.0, False)
    assert quiz.exam_state(items, ["a"], 100.0, 800.0, 600).finished
    assert quiz.exam_state(items, items, 100.0, 101.0, None) == quiz.ExamState(3, 3, None, None, True)


def hand_answers() -> pd.DataFrame:
    """Five answers worked through by hand in the tests below."""
    rows = [("MMZ", "MMZ", "MMZ"), ("MMZ", "MYB", "MMZ"), ("MYB", "MYB", "MMZ"), ("EOS", "BAS", "EOS"),
            ("NGS", "NGS", "NGB")]
    out = []
    for n, (expert, chosen, model) in enumerate(rows):
        s = quiz.score(expert, chosen)
        out.append({"item": f"{expert}/{n}.jpg", "expert": expert, "chosen": chosen, "model": model,
                    "strict": s.strict, "tolerant": s.tolerant, "credit": s.credit, "created": T0 + n,
                    "pseudonym": "ann"})
    return pd.DataFrame(out)


def test_exam_report_counts_unanswered_items_as_wrong():
    answers = hand_answers()
    report = quiz.exam_report(answers, ["MMZ/1.jpg", "missing.jpg"])
    assert report["your answer"].tolist() == ["MYB", "(none)"]
    assert report["credit"].tolist() == [0.5, 0.0] and report["tolerant"].tolist() == [True, False]


# --- student tables ----------------------------------------------------------------------------------------

def test_summary_matches_the_hand_worked_numbers():
    # strict 1,0,1,0,1; tolerant 1,1,1,0,1; credit 1,.5,1,0,1; model strict 1,1,0,1,0; model tolerant all 1
    assert quiz.summary(hand_answers()) == {"answers": 5, "strict": 0.6, "tolerant": 0.8, "credit": 0.7,
                                            "model_strict": 0.6, "model_tolerant": 1.0}
    assert quiz.summary(hand_answers().iloc[:0]) == {"answers": 0}


def test_per_class_table_matches_the_hand_worked_table():
    table = quiz.class_table(hand_answers()).set_index("class")
    assert list(table.index) == ["MYB", "MMZ", "NGB", "NGS", "EOS", "BAS"]
    expected = {  # class: items, you P, you R, model P, model R (None = undefined)
        "MYB": (1, 0.5, 1.0, 0.0, 0.0), "MMZ": (2, 1.0, 0.5, 0.667, 1.0), "NGB": (0, None, None, 0.0, None),
        "NGS": (1, 1.0, 1.0, 0.0, 0.0), "EOS": (1, 0.0, 0.0, 1.0, 1.0), "BAS": (0, 0.0, None, None, None)}
    for abbr, values in expected.items():
        got = tuple(table.loc[abbr, ["items", "you: precision", "you: recall", "model: precision", "model: recall"]])
        for g, e in zip(got, values):
            assert (e is None and (g is None or (isinstance(g, float) and math.isnan(g)))) or g == e, (abbr, got)


def test_confusion_of_student_and_model_on_the_same_items():
    you, model = quiz.confusion(hand_answers(), "chosen"), quiz.confusion(hand_answers(), "model")
    assert you.loc["MMZ", "MYB"] == 1 and you.loc["EOS", "BAS"] == 1 and you.to_numpy().sum() == 5
    assert model.loc["MYB", "MMZ"] == 1 and model.loc["NGS", "NGB"] == 1 and model.to_numpy().sum() == 5


def test_progress_is_a_running_accuracy():
    prog = quiz.progress(hand_answers(), window=2)
    assert prog["strict"].tolist() == [1.0, 0.5, 0.5, 0.5, 0.5]
    assert prog["tolerant"].tolist() == [1.0, 1.0, 1.0, 0.5, 0.5]


# --- teacher tables ----------------------------------------------------------------------------------------

def class_of_four() -> pd.DataFrame:
    """Four students x three items, strict correctness (hand-worked below):
    s1: X1 Y1 Z1 / s2: X1 Y0 Z1 / s3: X0 Y0 Z1 / s4: X0 Y0 Z0."""
    grid = {"s1": (1, 1, 1), "s2": (1, 0, 1), "s3": (0, 0, 1), "s4": (0, 0, 0)}
    rows = []
    for who, marks in grid.items():
        for item, ok in zip(("X", "Y", "Z"), marks):
            rows.append({"pseudonym": who, "item": item, "expert": "MMZ", "chosen": "MMZ" if ok else "MYB",
                         "model": "MMZ", "strict": bool(ok), "tolerant": True, "credit": 1.0 if ok else 0.5,
                         "created": T0})
    return pd.DataFrame(rows)


def test_item_difficulty_and_discrimination_match_the_hand_worked_values():
    stats = quiz.item_stats(class_of_four()).set_index("item")
    assert stats["difficulty"].to_dict() == {"Y": 0.25, "X": 0.5, "Z": 0.75}
    # X: corr([1,1,0,0], rest [1,.5,.5,0]) = 0.5/sqrt(1*0.5) = 0.7071
    # Y: corr([1,0,0,0], rest [1,1,.5,0]) = 0.375/sqrt(0.75*0.6875) = 0.5222
    # Z: corr([1,1,1,0], rest [1,.5,0,0]) = 0.375/sqrt(0.75*0.6875) = 0.5222
    assert stats.loc["X", "discrimination"] == pytest.approx(0.7071, abs=1e-4)
    assert stats.loc["Y", "discrimination"] == pytest.approx(0.5222, abs=1e-4)
    assert stats.loc["Z", "discrimination"] == pytest.approx(0.5222, abs=1e-4)
    assert list(stats.index) == ["Y", "X", "Z"]  # hardest first
    few = quiz.item_stats(class_of_four().head(6))  # two students: too few for a correlation
    assert few["discrimination"].isna().all()


def test_most_confused_pairs_and_their_remediation_set(pool):
    answers = pd.DataFrame({"expert": ["MMZ", "MMZ", "MMZ", "MYB", "EOS", "EOS", "LYT"],
                            "chosen": ["MYB", "MYB", "MYB", "MMZ", "BAS", "BAS", "LYT"]})
    pairs = quiz.confused_pairs(answers)
    assert pairs[["pair", "count"]].values.tolist() == [["MYB/MMZ", 4], ["EOS/BAS", 2]]
    remedy = quiz.remediation_set(pool, "MYB", "MMZ", n=10)
    experts = pool.set_index("path").loc[remedy, "expert"].tolist()
    assert len(remedy) == 10 and experts.count("MYB") == 5 == experts.count("MMZ")
    assert "MMZ/MMZ_000.jpg" not in remedy and "MMZ/MMZ_001.jpg" in remedy  # the borderline one, not contested


def test_class_vs_model_and_student_summaries():
    table = quiz.class_vs_model(hand_answers()).set_index("class")
    assert table.loc["MMZ", "students: strict"] == 0.5 and table.loc["MMZ", "model: strict"] == 1.0
    assert table.loc["MYB", "model: tolerant"] == 1.0 and table.loc["EOS", "students: tolerant"] == 0.0
    people = quiz.student_summaries(class_of_four()).set_index("student")
    assert people.loc["s1", "strict"] == 1.0 and people.loc["s4", "answers"] == 3
    assert people.loc["s2", "credit"] == pytest.approx(0.833, abs=1e-3)


def test_confusion_cells_can_be_clicked_through_to_their_items():
    answers = class_of_four()
    points = quiz.confusion_points(answers)
    assert points.set_index(["expert", "answer"])["count"].to_dict() == {("MMZ", "MMZ"): 6, ("MMZ", "MYB"): 6}
    event = {"selection": {"points": [{"x": "MYB", "y": "MMZ", "curve_number": 0}]}}
    assert quiz.selected_cell(event) == ("MMZ", "MYB") and quiz.selected_cell(None) is None
    assert quiz.selected_cell({"selection": {"points": []}}) is None
    items = quiz.cell_items(answers, "MMZ", "MYB")
    assert items.set_index("item")["students"].to_dict() == {"Y": 3, "X": 2, "Z": 1}


def test_picker_groups_classes_by_lineage():
    options = quiz.lineage_options()
    assert sorted(options) == sorted(ABBRS) and options[0] == "BLA" and options[-1] == "NIF"
    assert quiz.picker_label("MYB") == "granulopoiesis · MYB · Myelocyte"
