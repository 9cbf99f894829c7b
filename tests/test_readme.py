"""The README's Python tour runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.fashion
def test_python_tour_runs(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    code = re.search(r"```python\n(import lmsearch\n.*?)```", readme, re.S).group(1)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "completed" in proc.stdout and "rev" in proc.stdout and "first_order" in proc.stdout


def test_to_lm_example_runs_offline() -> None:
    """The LM-ResNet-50 example (torchvision's resnet50 -> to_lm -> a few fine-tuning steps -> save/load)."""
    readme = (REPO / "README.md").read_text()
    code = re.search(r"```python\n(import torch\nimport torchvision\n\nimport lmsearch\n.*?)```", readme, re.S).group(1)
    assert "to_lm(net)" in code and "ResNet50_Weights.DEFAULT" in code
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "layer4.2" in proc.stdout and "0.000000" not in proc.stdout
