"""``python -m mammo_lib.reproduce [--profile P] ...``: the one-command reproduction, the same as
``mammo-kt reproduce`` (:mod:`mammo_lib.cli` owns the options; :mod:`mammo_lib.repro.runner` runs the
notebooks)."""
import sys

from mammo_lib.cli import main

if __name__ == "__main__":
    sys.exit(main(["reproduce", *sys.argv[1:]]))
