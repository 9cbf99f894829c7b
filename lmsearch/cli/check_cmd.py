"""``lmsearch check``: do an experiment's study.db, trials.csv, curves.csv and pareto.csv agree?"""

from __future__ import annotations

import argparse
import sys

from lmsearch.cli import nonempty

HELP = """Check that experiment folders tell one truth: study.db agrees with trials.csv, curves.csv and pareto.csv.

Compares every trial's state, number, Ray id and objective values in the Optuna
study with trials.csv, each epoch's val_acc in curves.csv with the study's
intermediate values and the trial's epochs_run, and pareto.csv with the front
of study.best_trials and the front of trials.csv (lmsearch.consistency).
The study is opened read-only: nothing in the folder changes.

examples:
  lmsearch check results/fashion_quick_reference
  lmsearch check results/a results/b

Exit status: 0 when every folder is consistent (one line each: "DIR: consistent:
N trials (c complete, p pruned, f failed); status S", where a search that is not
done adds ": L of P trials left to run", what a --resume would still run); 1 when
some disagree (each
disagreement is listed, naming the file, the trial and the field); 2 when a
folder cannot be read (not an experiment folder, a damaged table, no study)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dirs", nargs="+", metavar="DIR", type=nonempty, help="experiment folder(s) results/<name>/")


def run(args: argparse.Namespace) -> int:
    from lmsearch.consistency import check
    from lmsearch.results import ExperimentFolderError

    code = 0
    for folder in args.dirs:
        try:
            report = check(folder)
        except ExperimentFolderError as exc:
            print(f"lmsearch check: error: {exc}", file=sys.stderr)
            code = 2
            continue
        print(f"{folder}: {report.summary()}")
        for line in report.disagreements:
            print(f"  - {line}")
        if report.disagreements:
            code = max(code, 1)
    return code
