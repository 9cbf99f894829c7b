"""compression_table / monotonicity against a hand-worked answer; lm_coefficients."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from lmsearch.analysis import (
    compression_table,
    compression_verdict,
    family_of,
    interpolated_compression,
    lm_coefficients,
    lm_coefficients_by_depth,
    matched_params,
    monotonicity,
    power_check,
)


def _trials() -> pd.DataFrame:
    rows = [
        # scheme, noise, depth, params, test_acc, state
        ("euler", "none", 20, 100, 0.80, "COMPLETE"),
        ("euler", "none", 20, 100, 0.82, "COMPLETE"),
        ("euler", "none", 20, 100, 0.84, "COMPLETE"),
        ("euler", "none", 32, 160, 0.85, "COMPLETE"),
        ("euler", "none", 32, 160, 0.87, "COMPLETE"),
        ("euler", "none", 32, 160, 0.89, "COMPLETE"),
        ("euler", "none", 44, 220, 0.86, "COMPLETE"),
        ("euler", "none", 44, 220, 0.90, "COMPLETE"),
        ("lm", "none", 20, 101, 0.855, "COMPLETE"),
        ("lm", "none", 20, 101, 0.865, "COMPLETE"),
        ("lm", "none", 32, 161, 0.88, "COMPLETE"),
        ("lm", "none", 32, 161, 0.86, "COMPLETE"),
        ("lm", "stochastic_depth", 20, 101, 0.80, "COMPLETE"),
        ("lm", "stochastic_depth", 20, 101, 0.81, "COMPLETE"),
        ("lm", "none", 56, 281, 0.99, "PRUNED"),  # not finished: ignored
        ("lm", "none", 44, 221, np.nan, "COMPLETE"),  # no test accuracy: ignored
    ]
    df = pd.DataFrame(rows, columns=["scheme", "noise", "depth", "params", "test_acc", "state"])
    df["seed"] = range(len(df))
    df["width"] = 16
    return df


def test_compression_table_equals_hand_worked_answer() -> None:
    t = compression_table(_trials())
    assert t[["family", "depth", "params", "n"]].values.tolist() == [
        ["euler", 20, 100, 3], ["euler", 32, 160, 3], ["euler", 44, 220, 2],
        ["lm", 20, 101, 2], ["lm", 32, 161, 2], ["lm+stochastic_depth", 20, 101, 2],
    ]
    # means, sample stds (ddof=1), standard errors of the mean, errors
    np.testing.assert_allclose(t["acc_mean"], [0.82, 0.87, 0.88, 0.86, 0.87, 0.805], atol=1e-12)
    np.testing.assert_allclose(t["acc_std"], [0.02, 0.02, 0.02 * math.sqrt(2), 0.005 * math.sqrt(2),
                                              0.01 * math.sqrt(2), 0.005 * math.sqrt(2)], atol=1e-12)
    np.testing.assert_allclose(t["acc_sem"], [0.02 / math.sqrt(3), 0.02 / math.sqrt(3), 0.02, 0.005, 0.01, 0.005],
                               atol=1e-12)
    np.testing.assert_allclose(t["err_mean"], [0.18, 0.13, 0.12, 0.14, 0.13, 0.195], atol=1e-12)
    # ResNet thresholds: mean - SE of the ResNet's mean
    np.testing.assert_allclose(t["threshold"][:3], [0.82 - 0.02 / math.sqrt(3), 0.87 - 0.02 / math.sqrt(3), 0.86],
                               atol=1e-12)
    assert t["threshold"][3:].isna().all()
    # euler-20 (thr 0.8085): lm-20 (0.86) matches -> 101/100; lm+sd-20 (0.805) does not
    # euler-32 (thr 0.8585): lm-20 (0.86) matches -> 101/160
    # euler-44 (thr 0.86, exactly lm-20's mean: "at least" includes it) -> 101/220
    np.testing.assert_allclose(t["ratio:lm"][:3], [1.01, 101 / 160, 101 / 220], atol=1e-12)
    assert t["match_depth:lm"][:3].tolist() == [20, 20, 20]
    assert t["match_params:lm"][:3].tolist() == [101, 101, 101]
    assert t["ratio:lm+stochastic_depth"].isna().all()
    assert t["ratio:lm"][3:].isna().all()


def test_compression_without_noise_split_and_with_other_metric() -> None:
    df = _trials()
    merged = compression_table(df, by_noise=False)
    assert set(merged["family"]) == {"euler", "lm"}
    lm20 = merged[(merged.family == "lm") & (merged.depth == 20)].iloc[0]
    assert lm20["n"] == 4 and lm20["acc_mean"] == pytest.approx((0.855 + 0.865 + 0.80 + 0.81) / 4)
    df["val_acc"] = df["test_acc"] - 0.5  # nothing LM reaches the ResNets' bar... only a metric change
    t = compression_table(df, metric="val_acc")
    np.testing.assert_allclose(t["acc_mean"][:3], [0.32, 0.37, 0.38], atol=1e-12)
    with pytest.raises(KeyError, match="params"):
        compression_table(df.drop(columns="params"))


def test_no_lm_net_qualifies_gives_nan() -> None:
    df = pd.DataFrame({"scheme": ["euler", "euler", "lm", "lm"], "depth": [20, 20, 20, 20],
                       "params": [10, 10, 11, 11], "test_acc": [0.9, 0.9, 0.5, 0.6]})
    t = compression_table(df)
    assert math.isnan(t.loc[0, "ratio:lm"]) and pd.isna(t.loc[0, "match_depth:lm"])
    assert t.loc[0, "threshold"] == pytest.approx(0.9)  # std 0: the bar is the mean itself


def test_monotonicity_hand_worked() -> None:
    m = monotonicity(_trials())
    assert m[["depth_from", "depth_to"]].values.tolist() == [[20, 32], [32, 44]]
    np.testing.assert_allclose(m["gain"], [0.05, 0.01], atol=1e-12)
    np.testing.assert_allclose(m["spread"], [0.02, 0.02 * math.sqrt(2)], atol=1e-12)
    assert m["rises"].tolist() == [True, False]
    # from a compression table too, and one seed means unknown spread -> not shown to rise
    assert monotonicity(compression_table(_trials()))["rises"].tolist() == [True, False]
    one = pd.DataFrame({"scheme": ["euler", "euler"], "depth": [20, 32], "params": [1, 2], "test_acc": [0.5, 0.9]})
    assert monotonicity(one)["rises"].tolist() == [False]


def test_family_of() -> None:
    assert family_of("lm", "stochastic_depth") == "lm+stochastic_depth"
    assert family_of("lm", "none") == family_of("lm", None) == family_of("lm", float("nan")) == "lm"


class _Step(torch.nn.Module):
    def __init__(self, k: torch.Tensor) -> None:
        super().__init__()
        self.k = torch.nn.Parameter(k)
        self.conv = torch.nn.Conv2d(2, 2, 1)


def test_lm_coefficients_of_a_hand_built_model() -> None:
    net = torch.nn.ModuleDict({
        "stage0": torch.nn.Sequential(torch.nn.Identity(), _Step(torch.tensor(-0.05)), _Step(torch.tensor(0.5))),
        "stage1": torch.nn.Sequential(torch.nn.Identity(), _Step(torch.tensor([0.1, 0.3]))),
    })
    c = lm_coefficients(net, dt=0.5)
    assert c["name"].tolist() == ["stage0.1", "stage0.2", "stage1.1"]
    assert c["stage"].tolist() == [0, 0, 1] and c["step"].tolist() == [1, 2, 1] and c["index"].tolist() == [0, 1, 2]
    np.testing.assert_allclose(c["k"], [-0.05, 0.5, 0.2], atol=1e-7)
    np.testing.assert_allclose(c["k_min"], [-0.05, 0.5, 0.1], atol=1e-7)
    np.testing.assert_allclose(c["k_max"], [-0.05, 0.5, 0.3], atol=1e-7)
    assert c["n_k"].tolist() == [1, 1, 2]
    # modified equation (1 + k) u' + (1 - k) dt/2 u'' = f(u)
    np.testing.assert_allclose(c["first_order"], [0.95, 1.5, 1.2], atol=1e-7)
    np.testing.assert_allclose(c["second_order"], [1.05 * 0.25, 0.5 * 0.25, 0.8 * 0.25], atol=1e-7)
    assert len(lm_coefficients(torch.nn.Linear(2, 2))) == 0


def _build_model():
    from lmsearch.nn.network import build_model

    return build_model


def test_lm_coefficients_of_a_real_lm_net() -> None:
    from lmsearch.arch import ArchSpec

    build_model = _build_model()
    spec = ArchSpec(scheme="lm", depth=20, width=4, in_channels=1)  # 3 stages x 3 steps, first of each is Euler
    c = lm_coefficients(build_model(spec))
    assert len(c) == sum(n - 1 for n in spec.steps_per_stage)
    assert c["stage"].tolist() == [0, 0, 1, 1, 2, 2]
    assert ((c["k"] >= -0.1) & (c["k"] <= 0.0)).all()  # authors' init U(-0.1, 0)
    assert len(lm_coefficients(build_model(spec.replace(scheme="euler")))) == 0
    per_channel = lm_coefficients(build_model(spec.replace(lm_k="channel")))
    assert len(per_channel) == len(c) and (per_channel["n_k"] > 1).all()


def test_lm_coefficients_by_depth_sums_up_each_net_over_its_seeds() -> None:
    init = "[-0.1, 0.0]"
    k = pd.DataFrame([
        # trial, depth, width, noise, k_n (two LM steps each)
        *[("a", 20, 8, "none", v) for v in (-0.05, 0.30)],
        *[("b", 20, 8, "none", v) for v in (0.10, -0.20)],
        *[("c", 20, 8, "stochastic_depth", v) for v in (-0.10, 0.00)],  # the init's ends are inside it
        *[("d", 20, 4, "none", v) for v in (0.50, 0.70)],                # another width: another net
    ], columns=["trial_id", "depth", "width", "noise", "k"]).assign(lm_k_init=init)
    out = lm_coefficients_by_depth(k).set_index(["family", "width"])
    assert list(out.index) == [("lm", 4), ("lm", 8), ("lm+stochastic_depth", 8)]
    lm = out.loc[("lm", 8)]
    assert (lm.trials, lm.steps, lm.outside_init) == (2, 4, 3)
    assert lm.k_mean == pytest.approx(0.0375) and (lm.k_min, lm.k_max) == (-0.20, 0.30)
    # trial means 0.125 and -0.05: sample std 0.175 / sqrt(2), over sqrt(2) trials
    assert lm.k_sem == pytest.approx(0.0875)
    assert (lm.first_order, lm.second_order) == (pytest.approx(1.0375), pytest.approx(0.48125))
    sd = out.loc[("lm+stochastic_depth", 8)]
    assert sd.outside_init == 0 and math.isnan(sd.k_sem) and sd.k_mean == pytest.approx(-0.05)
    assert out.loc[("lm", 4)].k_mean == pytest.approx(0.6)
    # without the init range, nothing is claimed about leaving it
    assert lm_coefficients_by_depth(k.drop(columns="lm_k_init"))["outside_init"].isna().all()
    assert list(lm_coefficients_by_depth(k.iloc[0:0]).columns) == list(lm_coefficients_by_depth(k).columns)


def test_power_check_holds_each_standard_error_to_a_third_of_resnets_gain() -> None:
    def table(rows: list[tuple[str, int, int, list[float]]]) -> pd.DataFrame:
        return compression_table(pd.DataFrame(
            [{"scheme": f, "depth": d, "params": p, "test_acc": a, "state": "COMPLETE"}
             for f, d, p, accs in rows for a in accs]))

    grid = table([("euler", 20, 100, [0.900, 0.902, 0.904]), ("euler", 56, 300, [0.930, 0.932, 0.934]),
                  ("lm", 20, 101, [0.90, 0.93, 0.96]), ("lm", 32, 160, [0.92])])
    power = power_check(grid).set_index(["family", "depth"])
    assert power.attrs["gain"] == pytest.approx(0.03) and power.attrs["limit"] == pytest.approx(0.01)
    # ResNet: std 0.002, sem 0.00115 <= 0.01, and (0.002 / 0.01)^2 < 3 seeds already there
    assert power.loc[("euler", 20), "powered"] and power.loc[("euler", 20), "seeds_needed"] == 3
    # lm-20: std 0.03, sem 0.0173 > 0.01; (0.03 / 0.01)^2 = 9 seeds would bring it to 0.01
    assert not power.loc[("lm", 20), "powered"] and power.loc[("lm", 20), "seeds_needed"] == 9
    # one seed: its error is unknown, so it is not powered and no count can be said
    assert not power.loc[("lm", 32), "powered"] and math.isnan(power.loc[("lm", 32), "seeds_needed"])
    # ResNet that does not gain with size: nothing is powered, whatever the seeds
    flat = power_check(table([("euler", 20, 100, [0.93, 0.931]), ("euler", 56, 300, [0.929, 0.930])]))
    assert math.isnan(flat.attrs["limit"]) and not flat["powered"].any() and flat["seeds_needed"].isna().all()
    assert math.isnan(power_check(table([("euler", 20, 100, [0.9, 0.91])])).attrs["gain"])


def test_lm_coefficients_by_depth_of_real_nets_per_channel_k_and_odd_init_ranges() -> None:
    from lmsearch.analysis import lm_steps
    from lmsearch.arch import ArchSpec

    build_model = _build_model()
    spec = ArchSpec(scheme="lm", depth=14, width=4, in_channels=1, lm_k="channel")

    def rows(net: torch.nn.Module, trial: str, init: str) -> pd.DataFrame:
        return lm_coefficients(net).assign(trial_id=trial, depth=14, width=4, lm_k_init=init)

    wide = build_model(spec)
    with torch.no_grad():
        for _, step in lm_steps(wide):
            step.k.copy_(torch.linspace(-0.55, 0.45, step.k.numel()).reshape(step.k.shape))
    fresh = build_model(spec)  # k_n as initialised: U(-0.1, 0), in float32
    const = build_model(spec)
    with torch.no_grad():
        for _, step in lm_steps(const):
            step.k.fill_(-0.05)  # float32(-0.05) != -0.05
    steps = len(lm_coefficients(wide))
    out = lm_coefficients_by_depth(pd.concat([rows(wide, "w", "[-0.1, 0.0]")])).iloc[0]
    # the channels' range, not the range of their means (-0.05 at every step); every step left the init
    assert (out.k_min, out.k_max) == (pytest.approx(-0.55), pytest.approx(0.45))
    assert out.k_mean == pytest.approx(-0.05) and out.outside_init == steps
    assert lm_coefficients_by_depth(rows(fresh, "f", "[-0.1, 0.0]")).outside_init.tolist() == [0]
    assert lm_coefficients_by_depth(rows(const, "c", "[-0.05, -0.05]")).outside_init.tolist() == [0]
    for odd in ("paper", "(-0.1, 0.0)", "NaN", "0.1", "[0.1]", '"paper"', "", "[1, 2, 3]"):
        assert math.isnan(lm_coefficients_by_depth(rows(fresh, "f", odd)).outside_init.iloc[0]), odd
    # one trial of unknown range makes the net's count unknown, not a partial count
    mixed = lm_coefficients_by_depth(pd.concat([rows(fresh, "f", "[-0.1, 0.0]"), rows(wide, "w", "odd")]))
    assert len(mixed) == 1 and mixed.trials.iloc[0] == 2 and math.isnan(mixed.outside_init.iloc[0])


# ---------------------------------------------------------------- interpolated compression
def test_matched_params_interpolates_in_log_params_and_takes_the_first_crossing() -> None:
    params, means = np.array([100.0, 400.0, 1600.0]), np.array([0.80, 0.90, 0.88])
    assert matched_params(0.85, params, means) == (200.0, "")          # halfway in log: sqrt(100 * 400)
    assert matched_params(0.90, params, means) == (400.0, "")
    assert matched_params(0.89, params, means)[0] == pytest.approx(100 * 4 ** 0.9)  # before the dip
    assert matched_params(0.95, params, means) == (1600.0, ">=")
    assert matched_params(0.70, params, means) == (100.0, "<=")


def _grid(lm_acc: list[float], base: dict[int, tuple[int, list[float]]], lm_params: int = 100) -> pd.DataFrame:
    rows = [{"scheme": "euler", "depth": d, "width": 8, "params": p, "state": "COMPLETE", "test_acc": a}
            for d, (p, accs) in base.items() for a in accs]
    rows += [{"scheme": "lm", "depth": 20, "width": 8, "params": lm_params, "state": "COMPLETE", "test_acc": a}
             for a in lm_acc]
    rows.append({"scheme": "lm", "depth": 20, "width": 8, "params": lm_params, "state": "FAILED", "test_acc": 0.99})
    return pd.DataFrame(rows)


def test_interpolated_compression_point_estimate_and_interval() -> None:
    base = {20: (100, [0.80, 0.80, 0.80]), 56: (400, [0.90, 0.90, 0.90])}
    exact = interpolated_compression(_grid([0.85, 0.85, 0.85], base), n_boot=200)
    assert len(exact) == 1 and exact.n.iloc[0] == 3  # the FAILED row does not count
    assert exact.matched_params.iloc[0] == 200.0 and exact.compression.iloc[0] == pytest.approx(0.5)
    # no seed spread: the interval is the point
    assert exact.ci_low.iloc[0] == exact.ci_high.iloc[0] == pytest.approx(0.5)
    noisy = interpolated_compression(_grid([0.84, 0.85, 0.86], base), n_boot=2000)
    lo, hi, c = noisy.ci_low.iloc[0], noisy.ci_high.iloc[0], noisy.compression.iloc[0]
    assert lo < c < hi and lo < 0.5 < hi
    # the same resamples come back with the same seed
    again = interpolated_compression(_grid([0.84, 0.85, 0.86], base), n_boot=2000)
    assert (again.ci_low.iloc[0], again.ci_high.iloc[0]) == (lo, hi)


def test_compression_beyond_the_resnet_curve_is_a_bound() -> None:
    base = {20: (100, [0.80, 0.81]), 56: (400, [0.90, 0.91])}
    above = interpolated_compression(_grid([0.95, 0.96], base), n_boot=100).iloc[0]
    assert above.bound == ">=" and above.matched_params == 400 and above.compression == pytest.approx(0.75)
    assert above.beyond_curve == 1.0


def test_compression_verdict_follows_the_intervals() -> None:
    def verdict(lows: list[float], highs: list[float]) -> str:
        return compression_verdict(pd.DataFrame({"ci_low": lows, "ci_high": highs}))

    assert verdict([0.51, -0.1], [0.7, 0.2]) == "reproduced"
    assert verdict([0.45, -0.1], [0.7, 0.2]) == "partial"
    assert verdict([0.0, -0.3], [0.4, 0.2]) == "no compression"
    assert compression_verdict(pd.DataFrame({"ci_low": [], "ci_high": []})) == "undecided"


def test_a_net_below_the_resnet_curve_never_reproduces_the_claim() -> None:
    # fewer parameters but less accurate than the smallest ResNet: not compression, whatever the ratio
    base = {20: (270, [0.92, 0.921, 0.919]), 56: (850, [0.93, 0.931, 0.929])}
    below = interpolated_compression(_grid([0.85, 0.851, 0.849], base, lm_params=80), n_boot=500)
    row = below.iloc[0]
    assert row.bound == "<=" and row.ci_low == -np.inf and row.beyond_curve == 1.0
    assert compression_verdict(below) == "no compression"
