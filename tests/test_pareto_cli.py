"""`lmsearch pareto` run as a user would, and the PNG plots."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
import torch

from lmsearch.analysis import compression_table
from lmsearch.arch import ArchSpec
from lmsearch.plots import hypervolume_curve, plot_curves, plot_hypervolume, plot_lm_coefficients, plot_pareto
from lmsearch.results import load_curves, load_results, trial_row, write_curves, write_experiment, write_trials_table

LMSEARCH = str(Path(sys.executable).with_name("lmsearch"))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _experiment(root: Path, name: str = "grid") -> Path:
    """A compression-style grid: euler/lm x depth x 3 seeds, plus a pruned and a failed trial."""
    exp = root / name
    write_experiment(exp, {"name": name, "dataset": "fashion-mnist", "status": "finished",
                           "objectives": [{"name": "val_acc", "direction": "maximize"},
                                          {"name": "params", "direction": "minimize"}]})
    rows, curves, n = [], [], 0
    for scheme in ("euler", "lm"):
        for depth, params in ((20, 10_000), (32, 16_000), (44, 22_000)):
            for seed in range(3):
                acc = 0.80 + depth / 1000 + (0.02 if scheme == "lm" else 0.0) + 0.001 * seed
                rows.append(trial_row(ArchSpec(scheme=scheme, depth=depth, width=8, in_channels=1),
                                      trial_id=f"t{n:02d}", number=n, state="COMPLETE", val_acc=acc,
                                      test_acc=acc - 0.005, params=params + (depth // 6 if scheme == "lm" else 0),
                                      seed=seed, dataset="fashion-mnist"))
                curves += [dict(trial_id=f"t{n:02d}", number=n, epoch=e, train_loss=1 / e, val_acc=acc - 0.1 / e)
                           for e in (1, 2, 3)]
                n += 1
    spec = ArchSpec(scheme="lm", depth=56, width=8, in_channels=1)
    rows.append(trial_row(spec, trial_id="pruned", number=n, state="PRUNED", val_acc=0.99, params=100))
    rows.append(trial_row(spec, trial_id="failed", number=n + 1, state="FAILED", error="boom"))
    write_trials_table(exp, rows)
    write_curves(exp, curves)
    return exp


def _assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 2000
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert np.ptp(image[..., :3]) > 0  # not a blank canvas


def _lmsearch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([LMSEARCH, *args], capture_output=True, text=True, timeout=180)


def test_pareto_cli_prints_front_and_writes_plot(tmp_path: Path) -> None:
    exp = _experiment(tmp_path)
    plot = tmp_path / "plots" / "front.png"
    proc = _lmsearch("pareto", str(exp), "--plot", str(plot))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "20 trials (18 complete, 1 pruned, 1 failed)" in out
    # seeds are replicates: the front is over each architecture's mean of its 3 seeds:
    # lm-20/32/44 and euler-20 (3 params fewer than lm-20)
    table = out.split("Pareto front")[1].split("plot written")[0]
    assert "4 architectures (mean +- standard error over their n seeds)" in table
    rows = [line.split() for line in table.strip().splitlines()[2:]]
    assert [r[1] for r in rows] == ["t15+t16+t17", "t12+t13+t14", "t09+t10+t11", "t00+t01+t02"]
    assert [r[2] for r in rows] == ["lm-44", "lm-32", "lm-20", "euler-20"]
    # n = 3, then val_acc 0.844 + 0.02 + 0.001 (seeds add 0, 1, 2 thousandths) +- 0.001 / sqrt(3)
    assert re.search(r" 3 +0\.8650\+-0\.0006 +0\.8600\+-0\.0006 ", table.strip().splitlines()[2])
    assert "<NA>" not in table and "pruned" not in table
    _assert_png(plot)


def test_pareto_cli_front_is_per_trial_without_repeated_seeds(tmp_path: Path) -> None:
    exp = _experiment(tmp_path)
    df = load_results(exp)
    one_seed = df[(df.seed == 2) | df.seed.isna()].drop(columns="experiment")
    write_trials_table(exp, one_seed)
    proc = _lmsearch("pareto", str(exp))
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout.split("Pareto front")[1]
    assert "4 trials" in table and "+-" not in table
    rows = [line.split() for line in table.strip().splitlines()[2:]]
    assert [r[1] for r in rows] == ["t17", "t14", "t11", "t02"]


def test_pareto_cli_by_scheme_and_compression(tmp_path: Path) -> None:
    exp = _experiment(tmp_path)
    proc = _lmsearch("pareto", str(exp), "--by", "scheme", "--compression")
    assert proc.returncode == 0, proc.stderr
    assert "scheme = euler" in proc.stdout and "scheme = lm" in proc.stdout
    assert "Compression table" in proc.stdout and "ratio lm" in proc.stdout
    assert "monotone: yes" in proc.stdout
    # ResNet gains 0.845 - 0.821 = 2.4 points from depth 20 to 44: the limit is 0.8; the seeds' sem is 0.058
    assert "smallest to its largest net: +2.40 points, limit 0.800):" in proc.stdout
    power = proc.stdout.split("Power (")[1].split("powered:")[0]
    assert power.count(" 0.058     yes") == 6 and "  powered: yes" in proc.stdout
    # every LM net placed on ResNet's curve, with its interval and the verdict
    placed = proc.stdout.split("LM nets on ResNet's")[1]
    lines = {line.split()[1]: line for line in placed.splitlines() if line.strip().startswith("lm ")}
    assert set(lines) == {"20", "32", "44"}
    assert ">=" in lines["44"] and ">=" not in lines["20"]  # lm-44 beats the deepest ResNet: a bound
    assert "verdict: " in placed


def test_pareto_cli_power_names_the_nets_that_need_seeds(tmp_path: Path) -> None:
    exp = _experiment(tmp_path)
    df = load_results(exp).drop(columns="experiment")
    noisy = (df.scheme == "lm") & (df.depth == 32)
    df.loc[noisy, "test_acc"] = [0.818, 0.848, 0.878]  # the same mean, std 0.03: sem 0.017 > limit 0.008
    write_trials_table(exp, df)
    proc = _lmsearch("pareto", str(exp), "--compression")
    assert proc.returncode == 0, proc.stderr
    # (0.03 / 0.008)^2 = 14.06: 15 seeds
    assert "  powered: NO - add seeds to lm-32 (15)" in proc.stdout


def test_pareto_cli_writes_compression_table_and_plot(tmp_path: Path) -> None:
    exp = _experiment(tmp_path)
    csv, png = tmp_path / "out" / "compression.csv", tmp_path / "out" / "compression.png"
    proc = _lmsearch("pareto", str(exp), "--compression-csv", str(csv), "--compression-plot", str(png))
    assert proc.returncode == 0, proc.stderr
    assert "Compression table" in proc.stdout  # implied by the two options
    table = pd.read_csv(csv)
    # the CSV is the table compression_table computes, row for row
    expected = compression_table(load_results(exp))
    assert table.family.tolist() == expected.family.tolist() and table.n.tolist() == [3] * 6
    np.testing.assert_allclose(table["ratio:lm"], expected["ratio:lm"].to_numpy(dtype=float), equal_nan=True)
    _assert_png(png)


def test_pareto_cli_compression_reports_the_learned_k_n_of_the_lm_nets(tmp_path: Path) -> None:
    from lmsearch.analysis import experiment_lm_coefficients, lm_steps
    from lmsearch.archfile import save_architecture
    from lmsearch.nn.network import build_model

    exp = _experiment(tmp_path)
    df = load_results(exp)
    lm = df[(df.scheme == "lm") & (df.state == "COMPLETE") & (df.depth < 44)]  # lm-44 has no weights on disk
    for row in lm.itertuples():
        net = build_model(ArchSpec(scheme="lm", depth=int(row.depth), width=8, in_channels=1))
        with torch.no_grad():
            for _, step in lm_steps(net):
                step.k.fill_(0.1 * (row.seed + 1))  # seeds 0, 1, 2: k_n = 0.1, 0.2, 0.3 at every step
        save_architecture(net, None, exp / "weights" / row.trial_id)
    csv = tmp_path / "k.csv"
    proc = _lmsearch("pareto", str(exp), "--coefficients-csv", str(csv))
    assert proc.returncode == 0, proc.stderr
    block = proc.stdout.split("Learned k_n of the LM nets")[1]
    assert "weights read for 6 of 9 complete LM trials" in block
    rows = {line.split()[1]: line.split() for line in block.splitlines() if line.strip().startswith("lm ")}
    # mean 0.2 over the seeds' 0.1, 0.2, 0.3 (sem 0.1 / sqrt 3); all 3 x 2 x 3 (lm-20) steps left U(-0.1, 0)
    assert rows["20"] == ["lm", "20", "8", "10,003", "3", "+0.200", "+-", "0.058", "[+0.100,", "+0.300]", "18", "of",
                          "18", "1.200", "0.400"]
    assert rows["32"][4:6] == ["3", "+0.200"] and rows["32"][10:13] == ["36", "of", "36"]
    written = pd.read_csv(csv)
    expected = experiment_lm_coefficients(exp)
    assert written.trial_id.tolist() == expected.trial_id.tolist() and len(written) == 3 * 6 + 3 * 12
    np.testing.assert_allclose(written.k, expected.k)
    clash = _lmsearch("pareto", str(exp), "--coefficients-csv", str(csv), "--compression-csv", str(csv))
    assert clash.returncode == 2 and "collide" in clash.stderr

    # a damaged weights file (here a Git LFS pointer) is named; everything else is still reported and written
    lfs = exp / "weights" / lm.trial_id.iloc[0] / "model.safetensors"
    good = lfs.read_bytes()
    lfs.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n")
    table = tmp_path / "c.csv"
    proc = _lmsearch("pareto", str(exp), "--compression-csv", str(table), "--coefficients-csv", str(csv))
    assert proc.returncode == 0, proc.stderr
    assert f"  trial {lm.trial_id.iloc[0]}: weights not readable (" in proc.stdout
    assert "weights read for 5 of 9 complete LM trials" in proc.stdout and table.is_file()
    assert len(pd.read_csv(csv)) == 2 * 6 + 3 * 12

    # two experiments whose trial ids coincide: 6 trials of lm-20, not 3 counted twice
    twin = tmp_path / "twin"
    shutil.copytree(exp, twin)
    meta = json.loads((twin / "experiment.json").read_text())
    (twin / "experiment.json").write_text(json.dumps({**meta, "name": "twin"}))
    lfs.write_bytes(good)  # readable again in the first; the twin keeps the damaged copy
    proc = _lmsearch("pareto", str(exp), str(twin), "--coefficients-csv", str(csv))
    assert proc.returncode == 0, proc.stderr
    assert "weights read for 11 of 18 complete LM trials" in proc.stdout
    assert f"  trial {lm.trial_id.iloc[0]} of {twin}: weights not readable (" in proc.stdout
    rows = {line.split()[1]: line.split() for line in proc.stdout.split("Learned k_n")[1].splitlines()
            if line.strip().startswith("lm ")}
    assert rows["20"][4] == "5" and rows["32"][4] == "6"
    assert set(pd.read_csv(csv).experiment) == {"grid", "twin"}


def test_pareto_cli_several_experiments_and_objectives(tmp_path: Path) -> None:
    a, b = _experiment(tmp_path, "a"), _experiment(tmp_path, "b")
    proc = _lmsearch("pareto", str(a), str(b), "--objectives", "test_acc:max", "params:min")
    assert proc.returncode == 0, proc.stderr
    assert "test_acc (max) vs params (min)" in proc.stdout
    assert "experiment" in proc.stdout  # shown when several experiments are combined


def test_pareto_cli_errors(tmp_path: Path) -> None:
    proc = _lmsearch("pareto", str(tmp_path))
    assert proc.returncode == 2 and "not an lmsearch experiment folder" in proc.stderr
    exp = _experiment(tmp_path)
    proc = _lmsearch("pareto", str(exp), "--objectives", "accuracy:max")
    assert proc.returncode == 2 and "accuracy" in proc.stderr and "Traceback" not in proc.stderr


def _refused(proc: subprocess.CompletedProcess, *words: str) -> None:
    """Exit 2 with one error line naming ``words``, no traceback."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert all(word in proc.stderr for word in words), proc.stderr


def test_pareto_cli_refuses_unwritable_outputs_before_any_work(tmp_path: Path) -> None:
    exp = _experiment(tmp_path)
    (tmp_path / "out.txt").write_text("a file")
    for option, name in (("--plot", "x.png"), ("--compression-csv", "x.csv"), ("--compression-plot", "x.png")):
        path = str(tmp_path / "out.txt" / "sub" / name)
        proc = _lmsearch("pareto", str(exp), option, path)
        _refused(proc, option, path, "out.txt is not a directory")
        assert proc.stdout == ""  # refused before the tables
    cc = tmp_path / "cc"
    proc = _lmsearch("pareto", str(exp), "--compression-csv", str(cc / "x.csv"), "--compression-plot", str(cc))
    _refused(proc, "--compression-plot", str(cc), "must end in one of")  # no image extension
    proc = _lmsearch("pareto", str(exp), "--compression-csv", str(cc / "x.csv"), "--compression-plot", f"{cc}.png",
                     "--plot", f"{cc}.png")
    _refused(proc, "--plot", "--compression-plot", "collide")
    proc = _lmsearch("pareto", str(exp), "--compression-csv", f"{cc}.png/x.csv", "--compression-plot", f"{cc}.png")
    _refused(proc, f"--compression-csv {cc}.png/x.csv and --compression-plot {cc}.png collide")
    assert proc.stdout == "" and not cc.exists() and not Path(f"{cc}.png").exists()
    # the experiment's subfolders belong to its search: a trial's weights are never written over
    arch = exp / "weights" / "t09" / "arch.json"
    arch.parent.mkdir(parents=True)
    arch.write_text("{}")
    for option, path, sub in (("--coefficients-csv", arch, "weights"),
                              ("--plot", exp / "checkpoints" / "new.png", "checkpoints")):
        proc = _lmsearch("pareto", str(exp), option, str(path))
        _refused(proc, option, str(path), f"is inside {sub}/ of the experiment in {exp}")
        assert proc.stdout == ""
    assert arch.read_text() == "{}" and not (exp / "checkpoints").exists()
    proc = _lmsearch("pareto", str(exp), "--plot", str(exp / "front.png"))  # beside the tables: the user's file
    assert proc.returncode == 0, proc.stderr


def test_pareto_cli_refuses_a_folder_that_takes_no_file_before_any_work(tmp_path: Path) -> None:
    exp = _experiment(tmp_path)
    proc = _lmsearch("pareto", str(exp), "--plot", "/proc/front.png")  # /proc takes no new files, even from root
    _refused(proc, "--plot: cannot write in /proc")
    assert proc.stdout == ""


def test_pareto_cli_write_error_is_one_clean_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import lmsearch.plots
    from lmsearch.cli import main

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(lmsearch.plots, "plot_pareto", disk_full)
    exp, plot = _experiment(tmp_path), tmp_path / "front.png"
    assert main(["pareto", str(exp), "--plot", str(plot)]) == 2
    out = capsys.readouterr()
    assert out.err == f"error: --plot {plot}: cannot write it: No space left on device\n"
    assert "Pareto front" in out.out  # the table was shown before the plot failed


def test_pareto_cli_outputs_are_judged_by_where_they_point(tmp_path: Path) -> None:
    exp = _experiment(tmp_path)
    link = tmp_path / "front.png"
    link.symlink_to(exp / "pareto.png")
    proc = _lmsearch("pareto", str(exp), "--plot", str(link))
    _refused(proc, f"--plot: {link} is a file of the experiment in {exp}")
    assert not (exp / "pareto.png").exists()
    proc = _lmsearch("pareto", str(exp), "--plot", str(tmp_path / "a.png"), "--compression-plot",
                     str(tmp_path / "sub" / ".." / "a.png"))
    _refused(proc, "collide")


def test_pareto_cli_plot_format_follows_the_extension(tmp_path: Path) -> None:
    exp = _experiment(tmp_path)
    pdf, svg = tmp_path / "front.pdf", tmp_path / "compression.svg"
    proc = _lmsearch("pareto", str(exp), "--plot", str(pdf), "--compression-plot", str(svg))
    assert proc.returncode == 0, proc.stderr
    assert pdf.read_bytes()[:5] == b"%PDF-" and b"<svg" in svg.read_bytes()[:1000]
    for name in ("front", "front.txt"):
        proc = _lmsearch("pareto", str(exp), "--plot", str(tmp_path / name))
        _refused(proc, "--plot", name, ".png", ".pdf", ".svg")
        assert proc.stdout == "" and not (tmp_path / name).exists()


def test_pareto_cli_refuses_a_text_objective(tmp_path: Path) -> None:
    exp = _experiment(tmp_path)
    proc = _lmsearch("pareto", str(exp), "--objectives", "scheme:max")
    _refused(proc, "objective column 'scheme' is not numeric", "'params'", "'val_acc'")
    assert "'block'" not in proc.stderr and proc.stdout == ""


def test_pareto_cli_compression_metric_must_be_an_accuracy(tmp_path: Path) -> None:
    exp = _experiment(tmp_path)
    proc = _lmsearch("pareto", str(exp), "--compression", "--metric", "params")
    assert proc.returncode == 2 and proc.stdout == ""
    assert "--metric: invalid choice: 'params'" in proc.stderr and "test_acc" in proc.stderr
    assert "val_acc" in proc.stderr and "Traceback" not in proc.stderr
    proc = _lmsearch("pareto", str(exp), "--compression", "--metric", "val_acc")
    assert proc.returncode == 0 and "Compression table (val_acc" in proc.stdout


def test_plots_are_written(tmp_path: Path) -> None:
    exp = _experiment(tmp_path)
    df = load_results(exp)
    _assert_png(plot_pareto(df, tmp_path / "p.png", by="scheme"))
    _assert_png(plot_curves(load_curves(exp), tmp_path / "c.png"))
    ref = {"val_acc": 0.7, "params": 30_000}
    _assert_png(plot_hypervolume(df, tmp_path / "h.png", ref=ref))
    coeffs = pd.DataFrame({"stage": [0, 0, 1], "index": [0, 1, 2], "k": [-0.05, 0.2, 0.5],
                           "k_min": [-0.05, 0.1, 0.5], "k_max": [-0.05, 0.3, 0.5]})
    _assert_png(plot_lm_coefficients(coeffs, tmp_path / "k.png"))
    with pytest.raises(ValueError, match=r"must end in one of .*\.pdf"):
        plot_pareto(df, tmp_path / "front")


def test_hypervolume_curve_is_nondecreasing_and_ends_at_the_total() -> None:
    from lmsearch.pareto import hypervolume

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"number": rng.permutation(30), "state": ["COMPLETE"] * 25 + ["PRUNED"] * 5,
                       "val_acc": rng.random(30), "params": rng.integers(1, 100, 30)})
    ref = {"val_acc": 0.0, "params": 100}
    curve = hypervolume_curve(df, ref)
    assert len(curve) == 25 and (np.diff(curve["hypervolume"]) >= 0).all()
    assert curve["hypervolume"].iloc[-1] == pytest.approx(hypervolume(df, ref))
    assert curve["number"].is_monotonic_increasing


def test_plot_lm_coefficients_of_a_model(tmp_path: Path) -> None:
    from lmsearch.analysis import lm_coefficients

    class Step(torch.nn.Module):
        def __init__(self, k: float) -> None:
            super().__init__()
            self.k = torch.nn.Parameter(torch.tensor(k))

    net = torch.nn.Sequential(*(Step(v) for v in (-0.05, 0.1, 0.4)))
    _assert_png(plot_lm_coefficients(lm_coefficients(net), tmp_path / "k.png", title="k_n"))
