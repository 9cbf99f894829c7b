"""save_architecture / load_architecture (lmsearch.archfile) and export_best: round trip, refusal of bad files."""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import lmsearch
import lmsearch.archfile as archfile
import lmsearch.export as export
from lmsearch.arch import ArchSpec
from lmsearch.archfile import ArchitectureFileError, load_architecture, save_architecture
from lmsearch.export import export_best, find_trial_weights
from lmsearch.results import read_trial_rows, trial_row, write_experiment, write_trials_table

LMSEARCH = str(Path(sys.executable).with_name("lmsearch"))


@pytest.fixture
def spec() -> ArchSpec:
    return ArchSpec(scheme="lm", depth=14, width=4, in_channels=1)  # 2 steps per stage: one LM step each


def _trained(spec: ArchSpec) -> torch.nn.Module:
    model = archfile._build_model(spec)
    with torch.no_grad():  # move every weight and buffer off its init so the round trip is not vacuous
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.add_(torch.randn_like(t) * 0.1)
                if name.endswith("running_var"):
                    t.abs_()
    return model.eval()


def test_round_trip_is_bit_exact(spec: ArchSpec, tmp_path: Path) -> None:
    model = _trained(spec)
    meta = {"metrics": {"val_acc": 0.9}, "provenance": {"experiment": "demo", "trial_id": "t1"}}
    out = save_architecture(model, spec, tmp_path / "exp", metadata=meta)
    assert sorted(p.name for p in out.iterdir()) == ["arch.json", "model.safetensors"]
    doc = json.loads((out / "arch.json").read_text())
    assert doc["format"] == "lmsearch-arch" and doc["version"] == 1 and doc["spec"] == spec.to_dict()
    assert len(doc["sha256"]) == 64 and doc["metrics"] == {"val_acc": 0.9}
    again = load_architecture(out)
    assert again.spec == spec and again.metadata == meta and not again.training
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(model(x), again(x))
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2) and v1.dtype == v2.dtype


def test_loading_never_unpickles(spec: ArchSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = save_architecture(_trained(spec), spec, tmp_path / "e")

    def forbidden(*args, **kwargs):
        raise AssertionError("load_architecture unpickled something")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    load_architecture(out)


def test_tampered_weights_refused(spec: ArchSpec, tmp_path: Path) -> None:
    out = save_architecture(_trained(spec), spec, tmp_path / "e")
    weights = out / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit of the last tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(ArchitectureFileError, match=r"model\.safetensors.*SHA-256.*does not match"):
        load_architecture(out)


def _rehash(out: Path, tensors: dict) -> None:
    save_file(tensors, str(out / "model.safetensors"))
    doc = json.loads((out / "arch.json").read_text())
    doc["sha256"] = archfile._sha256(out / "model.safetensors")
    (out / "arch.json").write_text(json.dumps(doc))


def test_mismatched_files_refused(spec: ArchSpec, tmp_path: Path) -> None:
    out = save_architecture(_trained(spec), spec, tmp_path / "e")
    tensors = load_file(str(out / "model.safetensors"))
    name = sorted(tensors)[0]
    # missing key (hash updated, so only the content check can catch it)
    _rehash(out, {k: v for k, v in tensors.items() if k != name})
    with pytest.raises(ArchitectureFileError, match=rf"model\.safetensors.*missing tensors {name}"):
        load_architecture(out)
    # unexpected key
    _rehash(out, {**tensors, "extra.weight": torch.zeros(2)})
    with pytest.raises(ArchitectureFileError, match="unexpected tensors extra.weight"):
        load_architecture(out)
    # a spec that does not fit the weights (wider net)
    _rehash(out, tensors)
    doc = json.loads((out / "arch.json").read_text())
    doc["spec"]["width"] = 8
    (out / "arch.json").write_text(json.dumps(doc))
    with pytest.raises(ArchitectureFileError, match="wrong shapes"):
        load_architecture(out)
    # an invalid spec, an unknown format, a missing directory
    doc["spec"]["depth"] = 15
    (out / "arch.json").write_text(json.dumps(doc))
    with pytest.raises(ArchitectureFileError, match=r"arch\.json: invalid architecture spec"):
        load_architecture(out)
    (out / "arch.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ArchitectureFileError, match="not an lmsearch architecture file"):
        load_architecture(out)
    with pytest.raises(ArchitectureFileError, match=r"nowhere.*arch\.json"):
        load_architecture(tmp_path / "nowhere")


def test_save_refuses_inconsistent_input(spec: ArchSpec, tmp_path: Path) -> None:
    model = _trained(spec)
    with pytest.raises(ValueError, match="reserved"):
        save_architecture(model, spec, tmp_path / "a", metadata={"sha256": "x"})
    with pytest.raises(ValueError, match="built from"):
        save_architecture(model, spec.replace(width=8), tmp_path / "b")
    assert save_architecture(model, None, tmp_path / "c").is_dir()  # spec taken from model.spec


def test_the_format_has_one_owner() -> None:
    assert lmsearch.save_architecture is archfile.save_architecture
    assert lmsearch.load_architecture is archfile.load_architecture
    assert not {"save_architecture", "load_architecture", "read_arch_json"} & set(export.__all__)


def _set_spec(out: Path, **fields: object) -> None:
    doc = json.loads((out / "arch.json").read_text())
    doc["spec"].update(fields)
    (out / "arch.json").write_text(json.dumps(doc))


@pytest.mark.parametrize("width", [1000, 10**6, 10**12])
def test_huge_width_is_refused_before_allocating(spec: ArchSpec, tmp_path: Path, width: int) -> None:
    """width 1000 would allocate 1.5 GB and is compared on the meta device; 10**6 (36 TB) and 10**12 are
    over MAX_ARCH_PARAMS by arithmetic alone."""
    out = save_architecture(_trained(spec), spec, tmp_path / "e")
    _set_spec(out, width=width)
    with pytest.raises(ArchitectureFileError) as info:
        load_architecture(out)
    message = str(info.value)
    if width == 1000:  # the header comparison names the weights file and the tensors
        assert re.search(r"model\.safetensors: .*wrong shapes [\w.]+: file \([\d, ]+\) vs spec \([\d, ]+\)", message)
        assert "file (16,) vs spec (4000,)" in message
        assert re.search(r"the spec needs [\d,]{11,} values, the file holds [\d,]{4,6}$", message)
    else:
        assert re.search(rf"arch\.json: the network of this spec cannot be built \(width {width}, depth 14\): this "
                         rf"network has at least [\d.e+]+ parameters; at most 1e\+09 are allowed", message)


def test_huge_depth_is_refused_before_building(spec: ArchSpec, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    out = save_architecture(_trained(spec), spec, tmp_path / "e")
    _set_spec(out, depth=6 * 10**8 + 2)  # 3e8 residual functions: building even on meta would exhaust memory

    def no_build(spec: ArchSpec) -> None:
        raise AssertionError("the network was built")

    monkeypatch.setattr(archfile, "_build_model", no_build)
    with pytest.raises(ArchitectureFileError, match=r"arch\.json: the spec \(depth 600000002\) has 300000000 "
                                                    r"residual functions but model\.safetensors holds only \d+ "
                                                    r"tensors"):
        load_architecture(out)


def test_arch_json_fields_are_validated(spec: ArchSpec, tmp_path: Path) -> None:
    out = save_architecture(_trained(spec), spec, tmp_path / "e")
    good = json.loads((out / "arch.json").read_text())
    cases = {
        "sha256": (123, r"'sha256' must be the 64 hexadecimal digits.*got 123"),
        "spec": ([1, 2], r"'spec' must be an object of ArchSpec fields; got list"),
        "version": ("1", r"format version '1' is not supported"),
        "weights": ("../x.safetensors", r"'weights' must be a file name"),
    }
    for field, (value, pattern) in cases.items():
        (out / "arch.json").write_text(json.dumps({**good, field: value}))
        with pytest.raises(ArchitectureFileError, match=r"arch\.json: " + pattern):
            load_architecture(out)


def test_save_refuses_nonfinite_weights(spec: ArchSpec, tmp_path: Path) -> None:
    model = _trained(spec)
    name = next(k for k, v in model.state_dict().items() if k.endswith("weight"))
    with torch.no_grad():
        model.state_dict()[name].view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match=rf"tensors {name} hold NaN or infinite values.*nothing written"):
        save_architecture(model, spec, tmp_path / "e")
    assert not (tmp_path / "e").exists()


def test_save_refuses_a_file_in_the_way(spec: ArchSpec, tmp_path: Path) -> None:
    model = _trained(spec)
    blocker = tmp_path / "file.txt"
    blocker.write_text("keep me")
    with pytest.raises(ValueError, match=r"file\.txt exists and is not a directory"):
        save_architecture(model, spec, blocker)
    with pytest.raises(ValueError, match=r"file\.txt is a file, so the export directory .*sub cannot be created"):
        save_architecture(model, spec, blocker / "sub")
    assert blocker.read_text() == "keep me"


# ------------------------------------------------------------------------------------------ export_best
def _experiment(tmp_path: Path, with_weights: bool) -> tuple[Path, dict[str, ArchSpec]]:
    exp = tmp_path / "demo"
    write_experiment(exp, {"name": "demo", "dataset": "fashion-mnist", "status": "finished",
                           "objectives": [{"name": "val_acc", "direction": "maximize"},
                                          {"name": "params", "direction": "minimize"}]})
    specs = {
        "small": ArchSpec(scheme="lm", depth=14, width=4, in_channels=1),
        "mid": ArchSpec(scheme="lm", depth=14, width=6, in_channels=1),
        "big": ArchSpec(scheme="euler", depth=14, width=8, in_channels=1),
        "dominated": ArchSpec(scheme="euler", depth=14, width=6, in_channels=1),
    }
    accs = {"small": 0.80, "mid": 0.85, "big": 0.90, "dominated": 0.82}
    sizes = {"small": 1000, "mid": 2000, "big": 4000, "dominated": 2500}
    rows = [trial_row(s, trial_id=f"abc_0000{i}", number=i, state="COMPLETE", val_acc=accs[k], params=sizes[k],
                      test_acc=accs[k] - 0.01, dataset="fashion-mnist", seed=i, lr=0.1)
            for i, (k, s) in enumerate(specs.items())]
    rows.append(trial_row(specs["small"], trial_id="abc_00004", number=4, state="PRUNED", val_acc=0.99, params=10))
    write_trials_table(exp, rows)
    if with_weights:
        for i, s in enumerate(specs.values()):
            save_architecture(_trained(s), s, exp / "weights" / f"abc_0000{i}")
    return exp, specs


def test_export_best_picks_the_most_accurate_front_net_within_budget(spec: ArchSpec, tmp_path: Path) -> None:
    exp, specs = _experiment(tmp_path, with_weights=True)
    out = export_best(exp, tmp_path / "out", max_params=3000)
    model = load_architecture(out)
    assert model.spec == specs["mid"]  # 'dominated' (0.82, 2500) is off the front; 'big' is over budget
    assert model.metadata["metrics"]["val_acc"] == 0.85 and model.metadata["metrics"]["params"] == 2000
    prov = model.metadata["provenance"]
    assert prov["experiment"] == "demo" and prov["trial_id"] == "abc_00001" and prov["number"] == 1
    assert prov["dataset"] == "fashion-mnist" and prov["seed"] == 1 and "weights/abc_00001" in prov["weights"]
    stored = load_architecture(exp / "weights" / "abc_00001")
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(model(x), stored(x))
    assert load_architecture(export_best(exp, tmp_path / "o2", trial="3")).spec == specs["dominated"]
    assert load_architecture(export_best(exp, tmp_path / "o3", trial="abc_00002")).spec == specs["big"]
    with pytest.raises(ValueError, match="smallest has 1,000"):
        export_best(exp, tmp_path / "o4", max_params=999)
    with pytest.raises(ValueError, match="no trial"):
        export_best(exp, tmp_path / "o5", trial="nope")


def test_export_best_without_weights_asks_for_retraining(spec: ArchSpec, tmp_path: Path) -> None:
    exp, _ = _experiment(tmp_path, with_weights=False)
    with pytest.raises(ValueError, match="no stored weights for trial abc_00001.*retrain"):
        export_best(exp, tmp_path / "out", max_params=3000)
    assert not (tmp_path / "out").exists()


def test_find_trial_weights_in_ray_checkpoints(spec: ArchSpec, tmp_path: Path) -> None:
    exp, specs = _experiment(tmp_path, with_weights=False)
    base = exp / "ray" / "demo" / "train_trial_abc_00001_1_lr=0.1"
    for n in (2, 10):
        save_architecture(_trained(specs["mid"]), specs["mid"], base / f"checkpoint_{n:06d}")
    save_architecture(_trained(specs["small"]), specs["small"], exp / "ray" / "demo" / "train_trial_abc_000010_x"
                      / "checkpoint_000099")
    assert find_trial_weights(exp, "abc_00001") == base / "checkpoint_000010"
    assert find_trial_weights(exp, "abc_00003") is None


def test_export_cli_reports_missing_weights(tmp_path: Path) -> None:
    exp, _ = _experiment(tmp_path, with_weights=False)
    proc = subprocess.run([LMSEARCH, "export", str(exp), "--max-params", "3000", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--retrain-epochs" in proc.stderr
    proc = subprocess.run([LMSEARCH, "export", str(exp), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--max-params" in proc.stderr  # one of --max-params/--trial is required


def test_export_cli_writes_a_loadable_export(tmp_path: Path) -> None:
    exp, specs = _experiment(tmp_path, with_weights=True)
    proc = subprocess.run([LMSEARCH, "export", str(exp), "--max-params", "3000", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "abc_00001" in proc.stdout
    assert load_architecture(tmp_path / "o").spec == specs["mid"]


def test_export_cli_refuses_an_existing_file_as_out(tmp_path: Path) -> None:
    exp, _ = _experiment(tmp_path, with_weights=True)
    target = tmp_path / "taken.txt"
    target.write_text("not an export")
    proc = subprocess.run([LMSEARCH, "export", str(exp), "--max-params", "3000", "--out", str(target)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert f"{target} exists and is not a directory" in proc.stderr and "Traceback" not in proc.stderr
    assert target.read_text() == "not an export"


def test_export_best_checks_out_before_retraining(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exp, _ = _experiment(tmp_path, with_weights=False)
    target = tmp_path / "taken.txt"
    target.write_text("x")

    def no_retrain(*args: object, **kwargs: object) -> None:
        raise AssertionError("retrained although the output cannot be written")

    monkeypatch.setattr(export, "_retrain", no_retrain)
    with pytest.raises(ValueError, match="exists and is not a directory"):
        export_best(exp, target, max_params=3000, retrain_epochs=5)


def test_export_best_refuses_a_diverged_retrain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lmsearch.data

    exp, specs = _experiment(tmp_path, with_weights=False)
    write_trials_table(exp, [trial_row(specs["small"], trial_id="abc_00000", number=0, state="COMPLETE",
                                       val_acc=0.8, params=1000, dataset="fashion-mnist", seed=0, lr=1e30,
                                       batch_size=16)])
    real = lmsearch.data.load_dataset
    monkeypatch.setattr(lmsearch.data, "load_dataset", lambda *a, **k: real(
        "synthetic", num_train=64, num_test=16, shape=(1, 12, 12), num_classes=10, val_fraction=0.0))
    with pytest.raises(ValueError, match=r"retraining trial abc_00000 did not complete \(diverged"):
        export_best(exp, tmp_path / "out", trial="0", retrain_epochs=1, device="cpu")
    assert not (tmp_path / "out").exists()


def test_export_directory_is_never_empty_or_an_experiment(tmp_path: Path) -> None:
    from lmsearch.archfile import check_output_dir

    with pytest.raises(ValueError, match="empty path"):
        check_output_dir("")
    write_experiment(tmp_path, {"name": "x"})
    with pytest.raises(ValueError, match="is an experiment folder"):
        check_output_dir(tmp_path)
    assert check_output_dir(tmp_path / "best") == tmp_path / "best"


def test_export_of_an_lm_net_without_lm_steps_is_written_as_euler(tmp_path: Path) -> None:
    """A run searched before spaces left lm-8 out: its "LM" net has no k, and the export says what it is."""
    exp = tmp_path / "old"
    write_experiment(exp, {"name": "old", "dataset": "fashion-mnist", "status": "finished",
                           "objectives": [{"name": "val_acc", "direction": "maximize"},
                                          {"name": "params", "direction": "minimize"}]})
    searched = ArchSpec(scheme="lm", depth=8, width=4, in_channels=1)
    write_trials_table(exp, [trial_row(searched, trial_id="abc_00000", number=0, state="COMPLETE", val_acc=0.8,
                                       params=5094, dataset="fashion-mnist", seed=0, lr=0.1)])
    net = _trained(searched)
    save_architecture(net, searched, exp / "weights" / "abc_00000")
    model = load_architecture(export_best(exp, tmp_path / "out"))
    assert model.spec == ArchSpec(scheme="euler", depth=8, width=4, in_channels=1)
    assert "searched_as" in model.metadata["provenance"] and "lm-8" in model.metadata["provenance"]["searched_as"]
    x = torch.randn(2, 1, 28, 28)
    net.eval()
    assert torch.equal(model(x), net(x))


def _export_cli(exp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([LMSEARCH, "export", str(exp), *args], capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_export_cli_refuses_an_unusable_device_before_loading_data(tmp_path: Path) -> None:
    exp, _ = _experiment(tmp_path, with_weights=False)
    missing = tmp_path / "no-data"  # a dataset that cannot load: the device must be refused before it is tried
    for device, message in (("cuda", "device='cuda' was asked for but CUDA is not available here; use --device "
                                      "cpu or auto"),
                            ("tpu", "device must be cpu, cuda, cuda:N or auto; got 'tpu'")):
        proc = _export_cli(exp, "--trial", "0", "--retrain-epochs", "1", "--device", device,
                           "--data-dir", str(missing), "--out", str(tmp_path / "o"))
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr == f"lmsearch export: error: {message}\n"
    assert not (tmp_path / "o").exists()


def test_export_cli_reports_a_missing_dataset(tmp_path: Path) -> None:
    exp, _ = _experiment(tmp_path, with_weights=False)
    missing = tmp_path / "no-data"
    proc = _export_cli(exp, "--trial", "0", "--retrain-epochs", "1", "--device", "cpu", "--data-dir", str(missing),
                       "--out", str(tmp_path / "o"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("lmsearch export: error: Fashion-MNIST not found: ") and str(missing) in proc.stderr
    assert "cannot write" not in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def _mark_running(exp: Path, trial_id: str) -> None:
    """The state Ctrl-C can leave: the row RUNNING (epoch-1 metrics, no test_acc) while weights/<id>/ is final."""
    rows = read_trial_rows(exp)
    for row in rows:
        if row["trial_id"] == trial_id:
            row.update(state="RUNNING", val_acc="0.5", test_acc="")
    write_trials_table(exp, rows)


def test_export_of_a_running_trial_is_refused(tmp_path: Path) -> None:
    exp, _ = _experiment(tmp_path, with_weights=True)
    _mark_running(exp, "abc_00000")
    proc = _export_cli(exp, "--trial", "0", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "Warning" not in proc.stderr, proc.stderr
    assert lines[0].startswith("lmsearch export: error: trial abc_00000 (number 0) is RUNNING, not COMPLETE")
    assert "may not belong together" in lines[0] and "val_acc 0.5, test_acc None" in lines[0]
    assert f"lmsearch search {exp / 'space.yaml'} --out {exp} --resume" in lines[0] and "--retrain-epochs N" in lines[0]
    assert "the trial that ran its configuration again" in lines[0]
    assert not (tmp_path / "o").exists()
    with pytest.raises(export.UnfinishedTrialError, match=r"is RUNNING, not COMPLETE.*--resume"):
        export_best(exp, tmp_path / "o", trial="abc_00000")
    with pytest.raises(export.UnfinishedTrialError, match=r"is PRUNED, not COMPLETE: .*; pass retrain_epochs"):
        export_best(exp, tmp_path / "o", trial="4")  # a PRUNED trial cannot be resumed: only retraining helps
    assert not (tmp_path / "o").exists()


def test_a_running_trial_is_exported_when_retrained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lmsearch.data

    exp, specs = _experiment(tmp_path, with_weights=True)
    _mark_running(exp, "abc_00000")
    real = lmsearch.data.load_dataset
    monkeypatch.setattr(lmsearch.data, "load_dataset", lambda *a, **k: real(
        "synthetic", num_train=32, num_test=16, shape=(1, 12, 12), num_classes=10, val_fraction=0.0))
    model = load_architecture(export_best(exp, tmp_path / "o", trial="0", retrain_epochs=1, device="cpu"))
    assert model.spec == specs["small"] and model.metadata["provenance"]["state"] == "RUNNING"
    assert model.metadata["provenance"]["weights"].startswith("retrained from scratch")
