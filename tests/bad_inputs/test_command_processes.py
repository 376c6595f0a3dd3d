"""The management commands as real processes: exit status and stderr as a user sees them.

The other tests run the commands in this process. These start ``manage.py`` against the
test database, so what Django prints around a CommandError is checked too. Each start
costs several seconds, so only two cases run this way.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from apps.annotations.models import Instance, ProposalRun
from apps.slides.models import Slide
from tests.bad_inputs import checkpoint_files, slide_files
from tests.bad_inputs.conftest import assert_no_traceback
from tests.conftest import create_slide_record
from tests.processes import REPO, child_environment

PROCESS_TIMEOUT_S = 120


def _manage(tmp_path, *args):
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=REPO, env=child_environment(tmp_path / "data"),
        capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S,
    )


@pytest.mark.django_db
def test_import_slides_process_rejects_each(shared_data, inputs_dir, tmp_path):
    cut = slide_files.truncated_svs(shared_data, inputs_dir)
    text = slide_files.text_named_tiff(inputs_dir)

    completed = _manage(tmp_path, "import_slides", str(cut), str(text))

    assert completed.returncode == 1
    assert completed.stdout == ""
    lines = completed.stderr.splitlines()
    assert lines[0].startswith(f"rejected: {cut}: OpenSlide cannot read this file")
    assert lines[1].startswith(f"rejected: {text}: OpenSlide cannot read this file")
    assert lines[2] == "CommandError: 2 of 2 slides were rejected."
    assert len(lines) == 3
    assert_no_traceback(completed.stderr)
    assert Slide.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_propose_process_rejects_code_pickle(inputs_dir, tmp_path):
    slide = create_slide_record("biopsy", 4000, 3000, mpp=0.5)
    marker = tmp_path / "code_ran"
    checkpoint = checkpoint_files.code_running_checkpoint(inputs_dir, marker)

    completed = _manage(tmp_path, "propose", str(slide.pk), "--checkpoint", str(checkpoint))

    assert completed.returncode == 1
    assert completed.stdout == ""
    run = ProposalRun.objects.get()
    # Log lines (level INFO by default) come first. The message is the last line.
    last_line = completed.stderr.splitlines()[-1]
    assert last_line == f"CommandError: Proposal run {run.pk} failed: {run.message}"
    assert_no_traceback(completed.stderr)
    assert re.fullmatch(
        rf"SAM checkpoint {re.escape(str(checkpoint))} is not a plain state dict; refusing to "
        r"unpickle it because it contains Python objects that would run code on load\. .*",
        run.message,
    )
    assert not marker.exists()
    assert Instance.objects.count() == 0
