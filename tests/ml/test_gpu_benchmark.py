"""benchmarks/gpu.py, the prepared GPU measurement, checked on the CPU with the tiny SAM."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import gpu


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_says_how_to_run(capsys):
    assert gpu.main([]) == 2
    assert "CUDA is not available on this machine" in capsys.readouterr().err


def test_cpu_plumbing_run_reports_every_measurement(tmp_path, capsys):
    out = tmp_path / "gpu.json"

    code = gpu.main([
        "--device", "cpu", "--sam-type", "tiny", "--repeats", "2", "--points-per-side", "4",
        "--training-tiles", "2", "--out", str(out),
    ])

    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == report
    encoder = report["encoder"]
    assert len(encoder["float32"]["seconds"]) == 2
    assert encoder["float32"]["max_abs_difference_to_float32"] == 0.0
    assert 0.0 < encoder["bfloat16"]["max_abs_difference_to_float32"] < 1.0
    for dtype in gpu.DTYPES:
        stages = report["proposals"][dtype]["stage_seconds"]
        assert set(stages) == {"read", "encoder", "mask_generation", "polygons", "merge"}
        assert report["proposals"][dtype]["tiles_processed"] > 0
    assert report["training_epoch"]["tiles"] == 2
    assert report["training_epoch"]["float32"]["train_loss"] > 0
    assert report["training_epoch"]["bfloat16"] == {"skipped": "bf16_autocast is supported on CUDA only"}
