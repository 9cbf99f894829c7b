"""Your own images: a class-per-folder set searched end to end, and the oneDNN crash that stopped it.

Every trial of a search on a 96 px image folder died with SIGSEGV in oneDNN's
1x1-convolution weight gradient: narrow ResNets (fewer than 16 channels into
a strided 1x1 shortcut projection) trained in NHWC (channels_last) on CPU
overrun oneDNN's workspace once images are 48 px or more (see
:func:`lmsearch.train.memory_format`). Not Ray's doing: the same training
crashed outside Ray too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import lmsearch
from lmsearch.arch import ArchSpec
from lmsearch.data import load_dataset
from lmsearch.data.synthetic import write_image_folder
from lmsearch.nn.counting import count_flops
from lmsearch.nn.network import build_model
from lmsearch.train import memory_format

ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


# ----------------------------------------------------------------- the crash
def test_narrow_strided_1x1_nets_train_in_nchw_on_cpu() -> None:
    cpu = torch.device("cpu")
    narrow = build_model(ArchSpec(scheme="lm", depth=8, width=4, in_channels=3, num_classes=3))  # 4 -> 8 -> 16
    wide = build_model(ArchSpec(scheme="lm", depth=8, width=16, in_channels=3, num_classes=3))  # 16 -> 32 -> 64
    padded = build_model(ArchSpec(scheme="euler", depth=8, width=4, shortcut="pad", in_channels=1, num_classes=3))
    assert memory_format(narrow, cpu) == torch.contiguous_format
    assert memory_format(wide, cpu) == torch.channels_last  # no affected convolution: NHWC is kept
    assert memory_format(padded, cpu) == torch.channels_last  # no 1x1 convolution at all
    assert memory_format(wide, cpu, channels_last=False) == torch.contiguous_format
    assert memory_format(narrow, torch.device("cuda")) == torch.channels_last  # oneDNN is CPU only


TRAIN_ONE_EPOCH = """
import sys, torch
from lmsearch.arch import ArchSpec
from lmsearch.data import load_dataset
from lmsearch.nn.network import build_model
from lmsearch.train import TrainConfig, Trainer

torch.set_num_threads(1)
data = load_dataset("folder", root=sys.argv[1], num_workers=0)
torch.manual_seed(0)
model = build_model(ArchSpec(scheme="lm", depth=8, width=4, in_channels=3, num_classes=data.info.num_classes))
result = Trainer(model, data, TrainConfig(epochs=1, batch_size=16, device="cpu", progress=False)).fit(test=True)
print(result.status, data.info.shape)
"""


def test_width4_resnet_trains_on_96px_images_on_cpu(tmp_path: Path) -> None:
    """The trial's training outside Ray: it used to die with SIGSEGV (returncode -11) in the first backward."""
    write_image_folder(tmp_path / "set", classes=3, per_class=12, test_per_class=2, size=(96, 96), mode="RGB")
    proc = subprocess.run([sys.executable, "-X", "faulthandler", "-c", TRAIN_ONE_EPOCH, str(tmp_path / "set")],
                          capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-3000:])
    assert proc.stdout.split() == ["completed", "(3,", "96,", "96)"]


# ---------------------------------------------------------------- the search
SPACE = """
name: {name}
dataset: {{name: folder, data_dir: {root}, image_size: {size}, val_fraction: 0.2}}
budget: {{epochs: 1}}
architecture:
  scheme: [euler, poly]
  depth: 8
  width: 4
training:
  lr: 0.05
  batch_size: 16
search: {{sampler: random, num_samples: 2, seed: 1, max_concurrent: 2}}
resources: {{cpu: 1, max_failures: 0}}
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode,native,size", [("L", (20, 20), 16), ("RGB", (96, 100), 96)],
                         ids=["grey-16px", "rgb-96px"])
def test_search_on_an_image_folder(tmp_path: Path, mode: str, native: tuple[int, int], size: int) -> None:
    """2 trials x 1 epoch through ``lmsearch search``, as a user runs it on their own folder."""
    root = write_image_folder(tmp_path / "images", classes=3, per_class=20, test_per_class=4, size=native, mode=mode)
    space = tmp_path / "space.yaml"
    space.write_text(textwrap.dedent(SPACE.format(name=f"folder-{mode}", root=root, size=size)))
    proc = subprocess.run([sys.executable, "-m", "lmsearch", "search", str(space), "--out", str(tmp_path / "exp")],
                          capture_output=True, text=True, timeout=600, env=ENV)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "SIGSEGV" not in proc.stdout + proc.stderr
    df = lmsearch.load_results(tmp_path / "exp")
    assert len(df) == 2 and (df["state"] == "COMPLETE").all(), df[["state", "error"]].to_string()
    channels = 1 if mode == "L" else 3
    data = load_dataset("folder", root=root, image_size=size, val_fraction=0.2)
    assert data.info.shape == (channels, size, size)
    for _, row in df.iterrows():
        spec = ArchSpec.from_json(row["arch_json"])
        assert row["in_channels"] == channels and row["num_classes"] == 3 and row["epochs_run"] == 1
        # FLOPs are counted at the input size the trial trained on: image_size reached the trial
        assert row["flops"] == count_flops(spec, input_size=(channels, size, size))
        assert 0.0 <= row["val_acc"] <= 1.0 and 0.0 <= row["test_acc"] <= 1.0
