"""python -m bmteach <command>: the command line lives in bmteach.cli (parser, handlers, error policy)."""
import sys

from bmteach.cli import main

if __name__ == "__main__":
    sys.exit(main())
