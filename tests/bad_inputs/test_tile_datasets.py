"""Bad tile dataset folders and options through ``import_tile_dataset``.

Every dataset is read whole before anything is written, so a rejected one leaves no
Slide, Instance or history event, and no mosaic folder. The command exits with status 1
and prints one line on stderr that names the folder, file or option and the next step.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from apps.annotations.models import Instance, InstanceEvent
from apps.slides.models import Slide
from tests.bad_inputs import tile_datasets
from tests.bad_inputs.conftest import assert_no_traceback, files_under, run_command
from tests.processes import REPO, child_environment

pytestmark = pytest.mark.django_db

PROCESS_TIMEOUT_S = 120
NO_PAIR = "has no image/mask pair in a class folder that the class map keeps."
CHECK_FOLDER = "Check the folder and the --stain option."


def _assert_nothing_written(output_dir):
    assert Slide.objects.count() == 0
    assert Instance.objects.count() == 0
    assert InstanceEvent.objects.count() == 0
    assert not output_dir.exists()


def _import(root, output_dir, *options):
    return run_command(
        "import_tile_dataset", str(root), "--output-dir", str(output_dir), *options
    )


def _assert_one_line(result, message):
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == f"CommandError: {message}\n"
    assert_no_traceback(result.stderr)


def test_real_pairs_import(shared_data, inputs_dir, tmp_path):
    root = tile_datasets.copy_real_pairs(shared_data, inputs_dir)

    result = _import(root, tmp_path / "out")

    assert result.exit_code == 0
    assert Slide.objects.count() == 1
    assert Instance.objects.count() > 0


@pytest.mark.parametrize("case", ["missing", "file"])
def test_dataset_path_not_folder(case, shared_data, inputs_dir, tmp_path):
    root = tile_datasets.dataset_root(inputs_dir)
    if case == "file":
        real_image = shared_data / tile_datasets.KI_ROOT / "1_1_pt" / "pas" / "im_50_7.png"
        root.write_bytes(real_image.read_bytes())

    result = _import(root, tmp_path / "out")

    _assert_one_line(result, (
        f"Tile dataset folder {root} does not exist or is not a folder. Pass the folder that "
        "contains the class folders such as 0_1_dt and 1_1_pt."
    ))
    _assert_nothing_written(tmp_path / "out")


def test_folder_without_class_folders(inputs_dir, tmp_path):
    root = tile_datasets.dataset_root(inputs_dir)
    (root / "images").mkdir(parents=True)

    result = _import(root, tmp_path / "out")

    _assert_one_line(result, (
        f"Tile dataset folder {root} contains no class folder named like '0_1_dt' "
        "(<class index>_<scale index>_<name>). Pass the KI root folder."
    ))
    _assert_nothing_written(tmp_path / "out")


def test_folder_with_no_images(inputs_dir, tmp_path):
    root = tile_datasets.dataset_root(inputs_dir)
    tile_datasets.stain_folder(inputs_dir).mkdir(parents=True)

    result = _import(root, tmp_path / "out")

    _assert_one_line(result, f"Tile dataset folder {root} {NO_PAIR} {CHECK_FOLDER}")
    _assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize(("images", "first_unpaired"), [
    (True, "im_50_7.png"), (False, "im_50_7_mask_proximal.png"),
])
def test_images_without_masks(images, first_unpaired, shared_data, inputs_dir, tmp_path):
    root = tile_datasets.copy_real_pairs(shared_data, inputs_dir, images=images, masks=not images)
    unpaired = tile_datasets.stain_folder(inputs_dir) / first_unpaired

    result = _import(root, tmp_path / "out")

    _assert_one_line(result, (
        f"Tile dataset folder {root} {NO_PAIR} 2 files have no partner image or mask, for "
        f"example {unpaired}. {CHECK_FOLDER}"
    ))
    _assert_nothing_written(tmp_path / "out")


def test_only_skipped_class_folders(shared_data, inputs_dir, tmp_path):
    # The tuft folder is real KI data that the default class map leaves out.
    root = tile_datasets.copy_real_pairs(shared_data, inputs_dir, class_folder="3_0_tuft")

    result = _import(root, tmp_path / "out")

    _assert_one_line(result, f"Tile dataset folder {root} {NO_PAIR} {CHECK_FOLDER}")
    _assert_nothing_written(tmp_path / "out")


# (generator, which file the message names, fragments that follow the file name).
DAMAGED_FILES = [
    ("text_as_mask", "mask", ["cannot be read as PNG (cannot identify image file",
                              "Replace or remove the file."]),
    ("truncated_image", "image", ["cannot be read as PNG (", "Replace or remove the file."]),
    ("mask_wrong_size", "mask", [
        "is 128 x 128 px but its image im_50_7.png is 256 x 256 px. Replace the mask with one "
        "of the image's size.",
    ]),
    ("grey_mask", "mask", [
        "pixels with values other than 0 and 255 (found [128]). A binary mask holds only 0 "
        "(outside) and 255 (inside). Re-export it without anti-aliasing or threshold it at 128.",
    ]),
    ("colour_mask", "mask", [
        "has different red, green and blue values; a binary mask is grey. Save it as black (0) "
        "and white (255) only.",
    ]),
    ("two_masks", "image", [
        "has 2 masks (im_50_7_mask_distal.png, im_50_7_mask_proximal.png); a KI tile has one. "
        "Move the extra masks out of the folder.",
    ]),
]


@pytest.mark.parametrize(("case", "named", "fragments"), DAMAGED_FILES)
def test_damaged_file_named(case, named, fragments, shared_data, inputs_dir, tmp_path):
    root = getattr(tile_datasets, case)(shared_data, inputs_dir)
    if named == "mask":
        path = tile_datasets.first_mask(inputs_dir)
    else:
        path = tile_datasets.first_image(inputs_dir)

    result = _import(root, tmp_path / "out")

    assert result.exit_code == 1
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"CommandError: {named.capitalize()} {path} ")
    for fragment in fragments:
        assert fragment in result.stderr
    assert_no_traceback(result.stderr)
    _assert_nothing_written(tmp_path / "out")


TOO_LARGE = (
    "has more than the 67,108,864 pixels a tile may have, so it was not decoded. Cut large "
    "images into tiles (KI tiles are 256 x 256 px)."
)


def test_mask_too_large_not_decoded(shared_data, inputs_dir, tmp_path):
    root = tile_datasets.bomb_mask(shared_data, inputs_dir, tile_datasets.BOMB_SIDES_PX[0])
    mask = tile_datasets.first_mask(inputs_dir)

    result = _import(root, tmp_path / "out")

    _assert_one_line(result, f"Mask {mask} {TOO_LARGE} It is 9000 x 9000 px.")
    _assert_nothing_written(tmp_path / "out")


def test_mask_over_pillow_limit(shared_data, inputs_dir, tmp_path):
    root = tile_datasets.bomb_mask(shared_data, inputs_dir, tile_datasets.BOMB_SIDES_PX[1])
    mask = tile_datasets.first_mask(inputs_dir)

    result = _import(root, tmp_path / "out")

    assert result.exit_code == 1
    # The rest of the line depends on whether large_image has switched Pillow's limit off
    # in this process: Pillow's own message, or the size.
    assert result.stderr.startswith(f"CommandError: Mask {mask} {TOO_LARGE} ")
    assert len(result.stderr.splitlines()) == 1
    _assert_nothing_written(tmp_path / "out")


def test_unknown_stain(shared_data, inputs_dir, tmp_path):
    root = tile_datasets.copy_real_pairs(shared_data, inputs_dir)

    result = _import(root, tmp_path / "out", "--stain", "ihc")

    _assert_one_line(result, (
        f"Stain folders ['ihc'] were not found in any class folder of {root}. Available "
        "stains: ['pas']."
    ))
    _assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize("case", ["file", "below_file"])
def test_output_dir_not_folder(case, shared_data, inputs_dir, tmp_path):
    root = tile_datasets.copy_real_pairs(shared_data, inputs_dir)
    blocking_file = tmp_path / "out"
    blocking_file.write_text("not a folder\n", encoding="utf-8")
    output_dir = blocking_file if case == "file" else blocking_file / "mosaics"
    reason = "File exists" if case == "file" else "Not a directory"

    result = _import(root, output_dir)

    _assert_one_line(result, (
        f"Output folder {output_dir} for the mosaics cannot be created ({reason}). Pass a "
        "folder, not a file, as --output-dir."
    ))
    assert Slide.objects.count() == 0
    assert Instance.objects.count() == 0
    assert blocking_file.read_text(encoding="utf-8") == "not a folder\n"


def test_patient_prefix_too_long(shared_data, inputs_dir, tmp_path):
    root = tile_datasets.copy_real_pairs(shared_data, inputs_dir)
    prefix = "p" * 60

    result = _import(root, tmp_path / "out", "--patient-prefix", prefix)

    _assert_one_line(result, (
        f"Patient id '{prefix}dataset' of tile dataset folder {root} has 67 characters, more "
        "than the 64 allowed. Use a shorter --patient-prefix."
    ))
    _assert_nothing_written(tmp_path / "out")


def test_unknown_user(shared_data, inputs_dir, tmp_path):
    root = tile_datasets.copy_real_pairs(shared_data, inputs_dir)

    result = _import(root, tmp_path / "out", "--user", "nobody")

    _assert_one_line(result, "User 'nobody' does not exist.")
    _assert_nothing_written(tmp_path / "out")


def test_import_tile_dataset_process_exit_1(shared_data, inputs_dir, tmp_path):
    root = tile_datasets.bomb_mask(shared_data, inputs_dir)
    output_dir = tmp_path / "out"

    completed = subprocess.run(
        [sys.executable, "manage.py", "import_tile_dataset", str(root), "--output-dir",
         str(output_dir)],
        cwd=REPO, env=child_environment(tmp_path / "data"), capture_output=True, text=True,
        timeout=PROCESS_TIMEOUT_S,
    )

    assert completed.returncode == 1
    assert completed.stdout == ""
    # Log lines (level INFO by default) come first. The message is the last line, and
    # large_image has switched Pillow's own limit off in this process.
    last_line = completed.stderr.splitlines()[-1]
    assert last_line == (
        f"CommandError: Mask {tile_datasets.first_mask(inputs_dir)} {TOO_LARGE} It is "
        "40000 x 40000 px."
    )
    assert_no_traceback(completed.stderr)
    assert files_under(output_dir) == []
