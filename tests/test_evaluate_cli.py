"""`sam2train evaluate` on the shared OSVOS predictions: the table, the JSON keys and the reference figures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import SHARED_DATA, needs_shared_data
from sam2train.cli import main


@needs_shared_data
def test_evaluate_writes_the_design_keys(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    for seq in ("blackswan", "bmx-trees"):
        shutil.copytree(SHARED_DATA / "reference" / "osvos_davis2016_pred" / seq, pred / seq)
        shutil.copytree(SHARED_DATA / "davis2016" / "Annotations" / "480p" / seq, gt / seq)
    out = tmp_path / "scores.json"
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--out", str(out)]) == 0
    scores = json.loads(out.read_text())
    for key in ("J&F", "J", "F", "J_recall", "F_recall", "J_decay", "F_decay", "per_sequence"):
        assert key in scores
    assert scores["per_sequence"]["blackswan"]["J"] == pytest.approx(0.943020, abs=1e-6)
    assert scores["per_sequence"]["bmx-trees"]["F"] == pytest.approx(0.766341, abs=1e-6)
    table = capsys.readouterr().out
    assert "blackswan" in table and "overall" in table


@needs_shared_data
def test_evaluate_names_a_missing_prediction_frame(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pred = tmp_path / "pred"
    shutil.copytree(SHARED_DATA / "reference" / "osvos_davis2016_pred" / "blackswan", pred / "blackswan")
    (pred / "blackswan" / "00010.png").unlink()
    gt = tmp_path / "gt"
    shutil.copytree(SHARED_DATA / "davis2016" / "Annotations" / "480p" / "blackswan", gt / "blackswan")
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt)]) == 2
    assert "00010.png" in capsys.readouterr().err
