"""Fixtures and checks shared by the bad-input tests."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

# Text that only a Python traceback contains. No message shown to a user may contain it.
TRACEBACK_MARKERS = ("Traceback", 'File "')


@dataclass(frozen=True)
class CommandResult:
    """What a management command run in-process returned.

    Attributes:
        exit_code: 0, or the ``returncode`` of the CommandError it raised, which
            ``manage.py`` uses as the process exit status.
        stdout: Everything the command wrote to stdout.
        stderr: Everything the command wrote to stderr, then the CommandError's message,
            as ``manage.py`` prints it ("CommandError: ...").
    """

    exit_code: int
    stdout: str
    stderr: str


def run_command(name: str, *args: str) -> CommandResult:
    """Run a management command in this process, against the test database.

    Any exception other than CommandError propagates, so a command that would show a
    user a traceback fails the test.
    """
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        call_command(name, *args, stdout=stdout, stderr=stderr)
    except CommandError as exc:
        stderr.write(f"CommandError: {exc}\n")
        return CommandResult(exc.returncode, stdout.getvalue(), stderr.getvalue())
    return CommandResult(0, stdout.getvalue(), stderr.getvalue())


def assert_no_traceback(text: str) -> None:
    """Fail if ``text`` contains traceback lines."""
    for marker in TRACEBACK_MARKERS:
        assert marker not in text


@pytest.fixture
def inputs_dir(tmp_path) -> Path:
    """The folder the bad files are written into, inside pytest's tmp_path."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    return folder


@pytest.fixture
def media_root(settings, tmp_path) -> Path:
    """An empty MEDIA_ROOT inside tmp_path, so uploads never reach the real one."""
    root = tmp_path / "media"
    root.mkdir()
    settings.MEDIA_ROOT = root
    return root


def audited_actions() -> list[str]:
    """Return the actions of the audit log other than sign-ins, oldest first."""
    from apps.accounts.models import AuditEvent

    events = AuditEvent.objects.exclude(action=AuditEvent.Action.LOGIN).order_by("id")
    return list(events.values_list("action", flat=True))


def files_under(folder: Path) -> list[Path]:
    """Return every file below ``folder`` (an absent folder has none)."""
    return sorted(path for path in folder.rglob("*") if path.is_file())


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A valid tiny random SAM checkpoint, written once per session."""
    from tests.sam_factory import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("checkpoints") / "tiny_sam.pth")


@pytest.fixture
def fast_proposals(settings, tiny_checkpoint):
    """Proposal settings of tests/web (few prompts, no thresholds) with the tiny SAM."""
    from tests.web.conftest import FAST_PROPOSALS

    settings.NEPHROWEB_PROPOSALS = dict(FAST_PROPOSALS)
    settings.NEPHROWEB_SAM_CHECKPOINT = str(tiny_checkpoint)
    return settings


@pytest.fixture
def fast_segmentation(settings):
    """Segmentation settings of tests/web for the tiny class-aware model."""
    from tests.web.conftest import FAST_SEGMENTATION

    settings.NEPHROWEB_SEGMENTATION = dict(FAST_SEGMENTATION)
    return settings


@pytest.fixture
def data_dir(settings, tmp_path) -> Path:
    """NEPHROWEB_DATA_DIR inside tmp_path, where training writes its model versions."""
    folder = tmp_path / "data"
    folder.mkdir()
    settings.DATA_DIR = folder
    return folder


def post_annotation_file(client, slide, path: Path, mapping=None):
    """POST ``path`` to the slide's annotation import API, with an optional class mapping."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    fields = {"file": SimpleUploadedFile(path.name, path.read_bytes())}
    if mapping is not None:
        fields["mapping"] = json.dumps(mapping)
    return client.post(f"/api/slides/{slide.pk}/annotation-imports/", fields)


def assert_no_annotation_written() -> None:
    """Assert that no instance, instance event or audit row exists."""
    from apps.annotations.models import Instance, InstanceEvent

    assert Instance.objects.count() == 0
    assert InstanceEvent.objects.count() == 0
    assert audited_actions() == []


def assert_unknown_classes_rejected(response, file_name: str) -> None:
    """Assert the import API's 400 for a file with the classes Tumor (2) and Stroma (1)."""
    assert response.status_code == 400
    body = response.json()
    assert body["unknown_classes"] == {"Tumor": 2, "Stroma": 1}
    assert body["detail"].startswith(
        f"{file_name}: unknown class names 'Tumor' (2), 'Stroma' (1). "
    )
    assert body["detail"].endswith("Nothing was imported.")
    assert_no_annotation_written()
