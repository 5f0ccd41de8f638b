"""The 21 bone-marrow cell classes of Matek et al. (Blood 2021) and the tolerated confusion pairs.

The class table and the tolerance pairs are data (assets/classes.csv, assets/tolerance.csv) so a teacher can
edit them without touching code. The order of `ABBRS` is the canonical output order of every model.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"
CLASSES_CSV = ASSETS / "classes.csv"
TOLERANCE_CSV = ASSETS / "tolerance.csv"


@dataclass(frozen=True)
class CellClass:
    abbr: str
    name: str
    lineage: str          # granulopoiesis (blasts too, as in the tree), monopoiesis, erythropoiesis, lymphopoiesis, others
    chain: str            # maturation chain ("granulocytic", "erythroid", "lymphoid") or "" when none
    stage: int | None     # position along the chain, 0 = most immature
    count: int            # images in the full data set (171,374 in all)
    colour: str           # hex colour used for this class in every chart


def _read_classes(path: Path = CLASSES_CSV) -> tuple[CellClass, ...]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return tuple(
        CellClass(
            abbr=r["abbr"], name=r["name"], lineage=r["lineage"], chain=r["chain"],
            stage=int(r["stage"]) if r["stage"] else None, count=int(r["count"]), colour=r["colour"],
        )
        for r in rows
    )


CLASSES: tuple[CellClass, ...] = _read_classes()
ABBRS: tuple[str, ...] = tuple(c.abbr for c in CLASSES)
BY_ABBR: dict[str, CellClass] = {c.abbr: c for c in CLASSES}
NUM_CLASSES = len(CLASSES)
LINEAGES: tuple[str, ...] = tuple(dict.fromkeys(c.lineage for c in CLASSES))
CHAINS: dict[str, tuple[str, ...]] = {
    chain: tuple(c.abbr for c in sorted((c for c in CLASSES if c.chain == chain), key=lambda c: c.stage))
    for chain in dict.fromkeys(c.chain for c in CLASSES if c.chain)
}


def index_of(abbr: str) -> int:
    """Position of a class in the canonical order; a clear error for an unknown abbreviation."""
    try:
        return ABBRS.index(abbr)
    except ValueError:
        raise ValueError(f"Unknown class {abbr!r}: expected one of {', '.join(ABBRS)}.") from None


def class_name(abbr: str) -> str:
    return BY_ABBR[abbr].name if abbr in BY_ABBR else abbr


@dataclass(frozen=True)
class TolerancePair:
    a: str
    b: str
    enabled: bool
    confidence: str  # "high" (on by default) or "possible" (off by default)


def read_tolerance_pairs(path: str | Path | None = None) -> list[TolerancePair]:
    """All pairs in a tolerance CSV (columns a,b[,enabled][,confidence]); unknown classes are a clear error."""
    path = Path(path) if path else TOLERANCE_CSV
    if not path.is_file():
        raise FileNotFoundError(f"Tolerance file not found: {path}")
    pairs = []
    with open(path, newline="", encoding="utf-8") as f:
        for line_no, r in enumerate(csv.DictReader(f), start=2):
            a, b = (r.get("a") or "").strip(), (r.get("b") or "").strip()
            for abbr in (a, b):
                if abbr not in BY_ABBR:
                    raise ValueError(f"{path}:{line_no}: unknown class {abbr!r} in tolerance pair.")
            enabled = (r.get("enabled") or "1").strip().lower() in ("1", "true", "yes", "on")
            pairs.append(TolerancePair(a, b, enabled, (r.get("confidence") or "high").strip()))
    return pairs


def tolerance_set(path: str | Path | None = None, include_possible: bool = False) -> frozenset[frozenset[str]]:
    """The tolerated pairs as unordered pairs: those enabled in the file (plus the 'possible' ones if asked)."""
    return frozenset(
        frozenset((p.a, p.b)) for p in read_tolerance_pairs(path) if p.enabled or include_possible
    )


def is_tolerated(true: str, pred: str, pairs: frozenset[frozenset[str]]) -> bool:
    """True when pred is the true class or a tolerated neighbour of it (pairs apply in both directions)."""
    return true == pred or frozenset((true, pred)) in pairs
