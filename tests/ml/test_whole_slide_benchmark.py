"""The whole-slide and large-slide benchmarks on small inputs: adapter, report, slide writer."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import openslide
import pytest
import torch
from safetensors.torch import save_file
from segment_anything import SamPredictor

from benchmarks import large_slide_memory
from benchmarks.large_slide_memory import MPP, measure, spread_origins, write_large_slide
from benchmarks.reference_proposals import ClassAwareAsSam
from benchmarks.whole_slide import SECTION_TITLE, main
from ml.demo_model import build_demo_model
from ml.sample_slide import GLASS_RGB


@pytest.fixture(scope="module")
def demo_model():
    return build_demo_model(seed=3).eval()


def test_adapter_returns_model_logits(demo_model):
    # Meta's SamPredictor, driving the model through the adapter, returns the model's own
    # low-resolution logits and IoU for every prompt.
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    adapter = ClassAwareAsSam(demo_model, background_class=None, min_class_probability=0.0)
    predictor = SamPredictor(adapter)
    points = torch.tensor([[[40.0, 60.0]], [[200.0, 128.0]], [[128.0, 30.0]]])
    labels = torch.ones(3, 1, dtype=torch.int)
    with torch.no_grad():
        predictor.set_image(image)
        _, ious, low_res = predictor.predict_torch(points, labels, multimask_output=True)
        embedding = demo_model.embed_images(torch.from_numpy(image).permute(2, 0, 1)[None].float())
        expected = demo_model.predict(embedding, point_coords=points, point_labels=labels)

    assert low_res.shape == (3, 1, 64, 64)
    assert torch.allclose(low_res, expected.low_res_logits, atol=1e-4)
    assert torch.allclose(ious[:, 0], expected.iou_predictions, atol=1e-5)
    assert low_res.std() > 0.01


def test_adapter_folds_class_filters(demo_model):
    points = torch.rand(6, 1, 2, generator=torch.Generator().manual_seed(0)) * 256
    labels = torch.ones(6, 1, dtype=torch.int)
    image = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1)) * 255
    with torch.no_grad():
        embedding = demo_model.embed_images(image)
        sparse, dense = demo_model.prompt_encoder(points=(points, labels), boxes=None, masks=None)
        pe = demo_model.prompt_encoder.get_dense_pe()
        output = demo_model.mask_decoder(embedding, pe, sparse, dense)
        rejecting = ClassAwareAsSam(demo_model, "background", min_class_probability=1.1)
        _, rejected_iou = rejecting.mask_decoder(embedding, pe, sparse, dense, True)
        keeping = ClassAwareAsSam(demo_model, None, min_class_probability=0.0)
        _, kept_iou = keeping.mask_decoder(embedding, pe, sparse, dense, True)

    assert torch.equal(rejected_iou, torch.full((6, 1), -1.0))
    assert torch.allclose(kept_iou, output.iou_pred)


def test_whole_slide_report_on_a_small_slide(tmp_path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n## Other section\n\nKept.\n", encoding="utf-8")
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        status = main(
            [
                "--size",
                "1024",
                "768",
                "--epochs",
                "1",
                "--work-dir",
                str(tmp_path / "work"),
                "--docs",
                str(docs),
            ]
        )
    report = json.loads(output.getvalue())

    assert status == 0
    reference, variants = report["reference"], report["variants"]
    ours = variants["ours"]
    # A 1024 x 768 px slide at 0.5 µm/px is 256 x 192 px at 2 µm/px: one 256 px tile each.
    assert reference["tiles"] == 1
    assert reference["prompts"] == 32 * 32
    assert ours["tiles_total"] == 1
    assert ours["prompts"] == 16 * 16 * ours["tiles_processed"]
    assert variants["ours_reference_grid"]["prompts"] == 32 * 32 * ours["tiles_processed"]
    assert variants["ours_reference_grid"]["overlap_px"] == reference["overlap_px"] == 128
    assert variants["ours_skipping"]["prompts"] <= ours["prompts"]
    assert reference["correct_instances"] <= reference["instances"]
    for column in variants.values():
        assert column["speedup"] == pytest.approx(
            reference["seconds"] / column["seconds"], rel=1e-2
        )
        assert column["cpu_speedup"] == pytest.approx(
            reference["cpu_seconds"] / column["cpu_seconds"], rel=1e-2
        )
        recall = dict(column["recall"])
        note = recall.pop("note")
        for value in recall.values():
            assert value is None or 0.0 <= value <= 1.0
        if reference["instances"] == 0:
            assert recall["of_reference_at_iou80"] is None
            assert note.startswith("undefined")
    text = docs.read_text(encoding="utf-8")
    assert SECTION_TITLE in text
    assert "Kept." in text
    assert "| prompts decoded | 1024 |" in text
    # A second run reuses the trained weights instead of training again.
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        main(
            [
                "--size",
                "1024",
                "768",
                "--epochs",
                "1",
                "--work-dir",
                str(tmp_path / "work"),
                "--no-docs",
            ]
        )
    assert json.loads(output.getvalue())["training_seconds"] is None


def test_large_slide_writer_pastes_patches_on_glass(tmp_path: Path):
    patch = np.zeros((300, 400, 3), dtype=np.uint8)
    patch[..., 0] = 200
    patch[:, :200, 1] = 50
    path = tmp_path / "large.tiff"
    origins = spread_origins((2048, 1536), patch.shape[:2], 2)
    assert origins == [(312, 618), (1336, 618)]

    levels = write_large_slide(path, (2048, 1536), patch, origins)

    assert levels == 3  # 2048, 1024 and 512 px wide; 256 would leave a 192 px side
    with openslide.OpenSlide(str(path)) as slide:
        assert slide.dimensions == (2048, 1536)
        assert slide.level_count == 3
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(MPP)
        region = np.asarray(slide.read_region((300, 600), 0, (450, 350)).convert("RGB"))
    # The patch starts at (312, 618): glass before it, the patch's two halves inside it.
    assert tuple(region[0, 0]) == GLASS_RGB
    assert tuple(region[18 + 10, 12 + 10]) == (200, 50, 0)
    assert tuple(region[18 + 10, 12 + 250]) == (200, 0, 0)
    assert not list(tmp_path.glob("*.partial"))


def test_large_slide_refuses_patches_that_do_not_fit():
    with pytest.raises(ValueError, match="do not fit"):
        spread_origins((1000, 1000), (600, 600), 4)


def test_memory_measurement_segments_the_written_slide(tmp_path: Path, demo_model):
    patch = np.full((600, 800, 3), (196, 96, 160), dtype=np.uint8)
    path = tmp_path / "large.tiff"
    write_large_slide(path, (3072, 2048), patch, spread_origins((3072, 2048), (600, 800), 1))
    weights = tmp_path / "demo.safetensors"
    save_file(
        {name: value.contiguous() for name, value in demo_model.state_dict().items()}, weights
    )

    row = measure(path, weights)

    # 768 x 512 px at 2 µm/px; the patch is 200 x 150 px there, inside few tiles.
    assert (row["width_px"], row["height_px"]) == (3072, 2048)
    assert 0 < row["tiles_processed"] < row["tiles_total"]
    assert row["peak_rss_mib_while_segmenting"] >= row["rss_mib_after_imports"] > 0
    assert row["max_rss_mib"] >= row["peak_rss_mib_while_segmenting"] - 1


def test_memory_benchmark_needs_weights(tmp_path: Path, capsys):
    status = large_slide_memory.main(["--weights", str(tmp_path / "missing.safetensors"), "--no-docs"])
    assert status == 2
    assert "missing.safetensors do not exist" in capsys.readouterr().err
