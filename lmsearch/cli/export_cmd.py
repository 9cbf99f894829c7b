"""``lmsearch export``: take the best architecture of a search away as arch.json + model.safetensors."""

from __future__ import annotations

import argparse
import json
import sys

from lmsearch.cli import nonempty

HELP = """Export an architecture of a search with its weights (arch.json + model.safetensors).

Picks the most accurate Pareto-front architecture within --max-params (or the
trial named by --trial: a Ray trial id or an Optuna trial number). Uses the
trial's own final weights when the search kept them; --retrain-epochs E
instead trains it from scratch on the full training set (train + validation).
A trial that is not COMPLETE (e.g. RUNNING after an interrupted search) is
exported only with --retrain-epochs: finish it first with --resume otherwise.
Load it back with lmsearch.load_architecture(DIR2).

examples:
  lmsearch export results/demo --max-params 300000 --out exported/lm-small
  lmsearch export results/demo --trial 17 --retrain-epochs 30 --out exported/t17"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", type=nonempty, help="experiment folder results/<name>/")
    pick = parser.add_mutually_exclusive_group(required=True)
    pick.add_argument("--max-params", type=int, metavar="N", help="parameter budget")
    pick.add_argument("--trial", metavar="ID", help="a trial id or Optuna trial number")
    parser.add_argument("--retrain-epochs", type=int, default=0, metavar="E",
                        help="retrain from scratch on train+val for E epochs (default 0: use the trial's weights)")
    parser.add_argument("--device", default=None, help="device for retraining (default: cuda if available)")
    parser.add_argument("--data-dir", default=None, type=nonempty,
                        help="dataset folder for retraining (default: the experiment's dataset.data_dir)")
    parser.add_argument("--out", required=True, metavar="DIR2",
                        help="output directory (created if needed; must not be an existing file)")


def run(args: argparse.Namespace) -> int:
    from lmsearch.archfile import read_arch_json
    from lmsearch.data import DatasetNotFoundError
    from lmsearch.export import export_best
    from lmsearch.results import ExperimentFolderError

    try:
        out = export_best(args.dir, args.out, max_params=args.max_params, trial=args.trial,
                          retrain_epochs=args.retrain_epochs, device=args.device,
                          data_root=args.data_dir)
    except (ExperimentFolderError, ValueError, KeyError, DatasetNotFoundError) as exc:
        print(f"lmsearch export: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. no permission to write --out
        print(f"lmsearch export: error: cannot write {args.out}: {exc}", file=sys.stderr)
        return 1
    doc = read_arch_json(out)
    spec, prov, metrics = doc["spec"], doc.get("provenance", {}), doc.get("metrics", {})
    print(f"exported {spec['scheme']}-{spec['depth']} (width {spec['width']}) "
          f"from trial {prov.get('trial_id')} of {prov.get('experiment')} to {out}")
    if prov.get("searched_as"):
        print(f"note: searched as {prov['searched_as']}")
    print(json.dumps({"metrics": metrics, "weights": prov.get("weights")}, indent=2))
    return 0
