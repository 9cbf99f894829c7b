"""``lmsearch pareto``: the Pareto front of one or more experiments, as a table and a plot."""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from lmsearch.cli import nonempty

HELP = """Show the Pareto front of a search (accuracy vs parameters by default).

examples:
  lmsearch pareto results/demo
  lmsearch pareto results/demo --by scheme --plot front.png
  lmsearch pareto results/a results/b --objectives val_acc:max flops:min
  lmsearch pareto results/compression-fashion-mnist/cpu --compression \\
      --compression-plot compression.png --compression-csv compression.csv
  lmsearch pareto results/compression-paper-w8/grid60 --compression --coefficients-csv k.csv

--compression prints the compression table, the seeds' power (each net's
standard error against 1/3 of ResNet's gain, and the seeds a net still needs),
each LM net placed on ResNet's
accuracy-vs-log(params) curve (compression with a 95% bootstrap interval over
seeds, and the verdict), and the learned k_n of the LM nets whose weights are
in the folder (weights/<trial_id>/, or Ray's checkpoints), read as the modified equation
(1 + k_n) u' + (1 - k_n)/2 u'' = f(u)."""

_ACCURACIES = ("test_acc", "val_acc")  # --metric: the compression analysis reads error = 1 - accuracy

_SHOW = ["experiment", "number", "trial_id", "arch", "width", "block", "params", "flops",
         "n", "val_acc", "test_acc", "epochs_run", "state"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dirs", nargs="+", metavar="DIR", type=nonempty, help="experiment folder(s) results/<name>/")
    parser.add_argument("--plot", metavar="FILE",
                        help="write the front plot here, in the format of its extension (.png, .pdf, .svg, ...)")
    parser.add_argument("--by", metavar="COLUMN", help="one front per value of COLUMN (e.g. scheme)")
    parser.add_argument("--objectives", nargs="+", metavar="COL:DIR",
                        help="objectives as column:max|min (default: the experiment's, else val_acc:max params:min)")
    parser.add_argument("--compression", action="store_true",
                        help="also print the compression analysis: the compression table, the depth-"
                             "monotonicity and power checks, the LM nets on ResNet's curve with the verdict, and "
                             "the learned k_n")
    parser.add_argument("--compression-plot", metavar="FILE",
                        help="write the compression plot (error vs params per scheme; .png, .pdf, .svg, ...) "
                             "here; implies --compression")
    parser.add_argument("--compression-csv", metavar="FILE",
                        help="write the compression table (CSV) here; implies --compression")
    parser.add_argument("--coefficients-csv", metavar="FILE",
                        help="write the learned k_n of every complete LM trial with weights on disk (one row per "
                             "trial and LM step, lmsearch.experiment_lm_coefficients) here; implies --compression")
    parser.add_argument("--metric", default="test_acc", choices=_ACCURACIES,
                        help="accuracy column for --compression (default test_acc)")


class _OutputError(ValueError):
    """An output file that cannot be written."""


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse, before anything is computed, output paths that cannot be written or that collide."""
    from lmsearch.results import check_output_file

    outputs = [(option, value) for option, value in (("--plot", args.plot), ("--compression-csv", args.compression_csv),
                                                     ("--compression-plot", args.compression_plot),
                                                     ("--coefficients-csv", args.coefficients_csv))
               if value is not None]
    for option, value in outputs:
        target = check_output_file(value, option)  # never written over an experiment
        if not option.endswith("-csv"):
            from lmsearch.plots import plot_format

            try:
                plot_format(target)
            except ValueError as exc:
                raise _OutputError(f"{option}: {exc}") from None
    for (option_a, a), (option_b, b) in itertools.combinations(outputs, 2):
        path_a, path_b = Path(a).resolve(), Path(b).resolve()
        if path_a == path_b or path_a in path_b.parents or path_b in path_a.parents:
            raise _OutputError(f"{option_a} {a} and {option_b} {b} collide; give two separate files")


@contextmanager
def _writing(option: str, path: str) -> Iterator[None]:
    """An OSError while writing ``path`` as a one-line error naming it."""
    try:
        yield
    except OSError as exc:
        raise _OutputError(f"{option} {path}: cannot write it: {exc.strerror or exc}") from None


def _objectives(args: argparse.Namespace, df: pd.DataFrame) -> list[tuple[str, str]] | None:
    from lmsearch.pareto import normalize_objectives

    if args.objectives:
        return normalize_objectives(args.objectives)
    found = []
    for meta in df.attrs.get("experiments", {}).values():
        objs = meta.get("objectives")
        if objs:
            found.append(tuple((o["name"], o["direction"]) for o in objs))
    if found and len(set(found)) == 1:
        return normalize_objectives(list(found[0]))
    return None


def _fmt_table(front: pd.DataFrame, objectives: list[tuple[str, str]], multi: bool) -> str:
    from lmsearch.plots import trial_label

    view = front.copy()
    view["arch"] = [trial_label(row) for _, row in view.iterrows()]
    columns = [c for c in _SHOW if c in view.columns and (c != "experiment" or multi)]
    columns += [c for c, _ in objectives if c not in columns]
    view = view[columns]
    text = {}
    for col in view.columns:
        if col in ("val_acc", "test_acc") and f"{col}_sem" in front.columns:  # a mean over seeds
            text[col] = [_mean_sem(v, e) for v, e in zip(view[col], front[f"{col}_sem"], strict=True)]
            continue
        if col in ("val_acc", "test_acc"):
            fmt = "{:.4f}".format
        elif col in ("params", "flops"):
            fmt = lambda v: f"{int(v):,}"  # noqa: E731
        else:
            fmt = str
        text[col] = ["" if pd.isna(v) else fmt(v) for v in view[col].astype(object)]
    return pd.DataFrame(text).to_string(index=False)


def _mean_sem(value: object, sem: object) -> str:
    if pd.isna(value):
        return ""
    return f"{value:.4f}" if pd.isna(sem) else f"{value:.4f}+-{sem:.4f}"


def _summary(df: pd.DataFrame) -> str:
    if "state" not in df.columns or not len(df):
        return f"{len(df)} trials"
    counts = df["state"].astype(object).fillna("?").value_counts()
    parts = ", ".join(f"{counts[s]} {s.lower()}" for s in counts.index)
    return f"{len(df)} trials ({parts})"


def _fmt_compression(table: pd.DataFrame, monotone: pd.DataFrame, metric: str) -> str:
    lines = []
    view = pd.DataFrame({
        "family": table["family"],
        "depth": table["depth"],
        "params": [f"{int(p):,}" for p in table["params"]],
        "n": table["n"],
        f"{metric} error % (mean +- std)": [
            f"{100 * e:.2f} +- {100 * s:.2f}" if not pd.isna(s) else f"{100 * e:.2f}"
            for e, s in zip(table["err_mean"], table["err_std"], strict=True)
        ],
    })
    for col in [c for c in table.columns if c.startswith("ratio:")]:
        fam = col.split(":", 1)[1]
        view[f"smallest {fam} matching"] = [
            "" if pd.isna(d) else f"{fam}-{int(d)} ({int(p):,})"
            for d, p in zip(table[f"match_depth:{fam}"], table[f"match_params:{fam}"], strict=True)
        ]
        view[f"ratio {fam}"] = ["" if pd.isna(r) else f"{r:.2f}" for r in table[col]]
    lines.append(view.to_string(index=False))
    lines.append("ratio = params of the smallest LM net whose mean accuracy >= the ResNet's mean minus "
                 "one standard error of the ResNet's mean, / the ResNet's params (< 1 = compression).")
    if len(monotone):
        lines.append("")
        lines.append("Euler accuracy vs depth (the table is meaningful only where accuracy rises by more "
                     "than the seed spread):")
        for row in monotone.itertuples(index=False):
            spread = "n/a" if pd.isna(row.spread) else f"{100 * row.spread:.2f}"
            verdict = "rises" if row.rises else "does NOT rise beyond the noise"
            lines.append(f"  depth {row.depth_from} -> {row.depth_to}: {100 * row.gain:+.2f} points "
                         f"(seed spread {spread}) {verdict}")
        ok = bool(monotone["rises"].all())
        lines.append(f"  monotone: {'yes' if ok else 'NO - read the ratios as noise, not compression'}")
    return "\n".join(lines)


def _fmt_power(power: pd.DataFrame) -> str:
    """Plan step 'power': each net's standard error against a third of ResNet's gain, and the seeds to add."""
    gain, limit = power.attrs["gain"], power.attrs["limit"]
    head = "Power (each mean's standard error must be <= 1/3 of ResNet's gain from its smallest to its largest net"
    if pd.isna(gain):
        return f"{head}):\n  (needs ResNet at two sizes)"
    if pd.isna(limit):
        return (f"{head}):\n  ResNet gains {100 * gain:+.2f} points from its smallest to its largest net: no seed "
                f"count can power the comparison")
    view = pd.DataFrame({
        "family": power["family"], "depth": power["depth"], "n": power["n"],
        "sem (points)": ["?" if pd.isna(e) else f"{100 * e:.3f}" for e in power["acc_sem"]],
        "powered": ["yes" if p else "NO" for p in power["powered"]],
        "seeds needed": ["" if pd.isna(k) else int(k) for k in power["seeds_needed"]],
    })
    short = [f"{r.family}-{r.depth} ({'?' if pd.isna(r.seeds_needed) else int(r.seeds_needed)})"
             for r in power.itertuples(index=False) if not r.powered]
    verdict = "yes" if not short else f"NO - add seeds to {', '.join(short)}"
    return "\n".join([f"{head}: {100 * gain:+.2f} points, limit {100 * limit:.3f}):", view.to_string(index=False),
                      f"  powered: {verdict}"])


def _fmt_interpolated(table: pd.DataFrame, verdict: str, metric: str) -> str:
    """The LM nets on ResNet's curve: matched params, compression and its interval, then the verdict."""
    lines = [f"LM nets on ResNet's {metric}-vs-log(params) curve (95% bootstrap interval over seeds):"]
    if not len(table):
        return lines[0] + "\n  (no ResNet and LM nets to compare)"
    view = pd.DataFrame({
        "family": table["family"], "depth": table["depth"], "params": [f"{int(p):,}" for p in table["params"]],
        "n": table["n"],
        f"{metric} % (mean +- sem)": [f"{100 * a:.2f}" + ("" if pd.isna(e) else f" +- {100 * e:.2f}")
                                      for a, e in zip(table["acc_mean"], table["acc_sem"], strict=True)],
        "matching ResNet params": [f"{b}{m:,.0f}" for b, m in zip(table["bound"], table["matched_params"],
                                                                 strict=True)],
        # P* >= the largest ResNet means compression >= its value, and the same for <=
        "compression %": [f"{b}{100 * c:.1f}" for b, c in zip(table["bound"], table["compression"], strict=True)],
        "95% interval %": [f"[{100 * lo:.1f}, {100 * hi:.1f}]" for lo, hi in zip(table["ci_low"], table["ci_high"],
                                                                                  strict=True)],
    })
    lines.append(view.to_string(index=False))
    lines.append("compression = 1 - LM params / the ResNet params of equal mean accuracy (>= / <=: beyond the "
                 "ResNet curve, a bound); the paper claims > 50%.")
    lines.append(f"verdict: {verdict} (reproduced only if some net's interval lies entirely above 50%)")
    return "\n".join(lines)


def _fmt_coefficients(by_depth: pd.DataFrame, coefficients: pd.DataFrame) -> str:
    """The learned k_n per LM net, read as the modified equation's coefficients, and the trials not read."""
    read, missing, unreadable = (coefficients.attrs[k] for k in ("read", "missing", "unreadable"))
    total = len(read) + len(missing) + len(unreadable)
    lines = [f"Learned k_n of the LM nets, over seeds (modified equation (1 + k_n) u' + (1 - k_n)/2 u'' = f(u); "
             f"weights read for {len(read)} of {total} complete LM trials):"]
    lines += [f"  trial {trial}: weights not readable ({why})" for trial, why in unreadable]
    if not total:
        return lines[0] + "\n  (no complete LM trials)"
    if not len(by_depth):
        return "\n".join([*lines, "  (no LM weights to read)"])
    view = pd.DataFrame({
        "family": by_depth["family"], "depth": by_depth["depth"],
        "width": ["" if pd.isna(w) else int(w) for w in by_depth["width"]],
        "params": ["" if pd.isna(p) else f"{int(p):,}" for p in by_depth["params"]], "trials": by_depth["trials"],
        "k_n mean +- sem": [f"{k:+.3f}" + ("" if pd.isna(e) else f" +- {e:.3f}")
                            for k, e in zip(by_depth["k_mean"], by_depth["k_sem"], strict=True)],
        "k_n range": [f"[{lo:+.3f}, {hi:+.3f}]" for lo, hi in zip(by_depth["k_min"], by_depth["k_max"], strict=True)],
        "left init range": ["?" if pd.isna(o) else f"{int(o)} of {n}"
                            for o, n in zip(by_depth["outside_init"], by_depth["steps"], strict=True)],
        "1 + k_n": [f"{v:.3f}" for v in by_depth["first_order"]],
        "(1 - k_n)/2": [f"{v:.3f}" for v in by_depth["second_order"]],
    })
    lines.append(view.to_string(index=False))
    return "\n".join(lines)


def _lm_coefficients(dirs: list[str]) -> pd.DataFrame:
    """experiment_lm_coefficients of every folder, one table (its ``experiment`` column tells them apart)."""
    from lmsearch.analysis import experiment_lm_coefficients

    parts = [experiment_lm_coefficients(folder) for folder in dirs]
    out = pd.concat([p for p in parts if len(p)] or parts[:1], ignore_index=True)
    # lists, not dicts keyed by trial id: two experiments may hold the same id
    out.attrs.update(missing=[t for p in parts for t in p.attrs["missing"]],
                     unreadable=[(t if len(dirs) == 1 else f"{t} of {folder}", why)
                                 for folder, p in zip(dirs, parts, strict=True)
                                 for t, why in p.attrs["unreadable"].items()],
                     read=[t for p in parts for t in p.attrs["read"]])
    return out


def run(args: argparse.Namespace) -> int:
    from lmsearch.pareto import DEFAULT_OBJECTIVES, front_table, normalize_objectives, objective_matrix, pareto_front
    from lmsearch.results import ExperimentFolderError, load_results

    try:
        _check_outputs(args)
        df = load_results([Path(d) for d in args.dirs])
        objectives = _objectives(args, df) or normalize_objectives(DEFAULT_OBJECTIVES)
        objective_matrix(df, objectives)  # an absent or text column refused before any output
        multi = df["experiment"].nunique() > 1
        print(_summary(df))
        if args.by:
            if args.by not in df.columns:
                print(f"error: --by {args.by}: no such column", file=sys.stderr)
                return 2
            for value, group in df.groupby(df[args.by].astype(object), sort=True):
                front = pareto_front(front_table(group)[0], objectives)
                print(f"\nPareto front, {args.by} = {value} ({len(front)} of {len(group)} trials):")
                print(_fmt_table(front, objectives, multi) if len(front) else "  (no complete trials)")
        # seeds are replicates: where the space repeats an architecture, the front is over their means
        table, replicated = front_table(df)
        front = pareto_front(table, objectives)
        what = " vs ".join(f"{c} ({d})" for c, d in objectives)
        unit = "architectures (mean +- standard error over their n seeds)" if replicated else "trials"
        print(f"\nPareto front{' over all' if args.by else ''}: {what}, {len(front)} {unit}")
        print(_fmt_table(front, objectives, multi) if len(front) else "  (no complete trials yet)")
        if args.plot:
            from lmsearch.plots import plot_pareto

            with _writing("--plot", args.plot):
                path = plot_pareto(table, args.plot, objectives=objectives, by=args.by or "scheme")
            print(f"\nplot written to {path}")
        if args.compression or args.compression_plot or args.compression_csv or args.coefficients_csv:
            from lmsearch.analysis import (
                compression_table,
                compression_verdict,
                interpolated_compression,
                lm_coefficients_by_depth,
                monotonicity,
                power_check,
            )

            table = compression_table(df, metric=args.metric)
            print(f"\nCompression table ({args.metric}, complete trials):")
            print(_fmt_compression(table, monotonicity(table), args.metric) if len(table) else "  (no data)")
            if len(table):
                print()
                print(_fmt_power(power_check(table)))
            placed = interpolated_compression(df, metric=args.metric)
            print()
            print(_fmt_interpolated(placed, compression_verdict(placed), args.metric))
            if args.compression_csv:
                with _writing("--compression-csv", args.compression_csv):
                    Path(args.compression_csv).parent.mkdir(parents=True, exist_ok=True)
                    table.to_csv(args.compression_csv, index=False)
                print(f"\ncompression table written to {args.compression_csv}")
            if args.compression_plot:
                from lmsearch.plots import plot_compression

                with _writing("--compression-plot", args.compression_plot):
                    path = plot_compression(table, args.compression_plot, trials=df, metric=args.metric)
                print(f"compression plot written to {path}")
            # last: reading every LM trial's weights is the slow part, and the tables above need none of it
            coefficients = _lm_coefficients(args.dirs)
            print()
            print(_fmt_coefficients(lm_coefficients_by_depth(coefficients), coefficients))
            if args.coefficients_csv:
                with _writing("--coefficients-csv", args.coefficients_csv):
                    Path(args.coefficients_csv).parent.mkdir(parents=True, exist_ok=True)
                    coefficients.to_csv(args.coefficients_csv, index=False)
                print(f"\nlearned k_n written to {args.coefficients_csv}")
    except (ExperimentFolderError, KeyError, ValueError) as exc:
        print(f"error: {exc.args[0] if isinstance(exc, KeyError) and exc.args else exc}", file=sys.stderr)
        return 2
    return 0
