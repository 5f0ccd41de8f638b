"""The command line: python -m bmteach <command>. The parser and one small handler per command.

The library (bmteach/*) returns values and raises UserError; this module is the only one that prints.
Handlers import the library lazily so `python -m bmteach --help` stays fast (no torch).
"""
from __future__ import annotations

import sys
import time


def cli_synth(args) -> int:
    from bmteach.classes import ABBRS
    from bmteach.synth import generate_dataset

    started = time.perf_counter()
    total = args.per_class * len(args.classes or ABBRS)

    def report(done: int, total: int) -> None:
        if done == total or done % 100 == 0:
            print(f"\r{done}/{total} images", end="\n" if done == total else "", file=sys.stderr, flush=True)

    out = generate_dataset(args.out, per_class=args.per_class, seed=args.seed, classes=args.classes,
                           shift=args.shift, difficulty=args.difficulty, progress=report)
    print(f"Wrote {total} synthetic images ({args.per_class} per class, shift {args.shift}) and their masks "
          f"to {out} in {time.perf_counter() - started:.1f} s.")
    return 0
