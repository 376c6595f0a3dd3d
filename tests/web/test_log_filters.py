"""The server log: a refused page is one line, other errors keep their traceback."""

import logging
import sys

import pytest

from nephroweb.log_filters import RefusalWithoutTraceback

pytestmark = pytest.mark.django_db


def test_refused_page_logs_one_line(client, make_user, caplog):
    client.force_login(make_user("annotator"))

    with caplog.at_level(logging.WARNING, logger="django.request"):
        response = client.get("/audit/")

    assert response.status_code == 403
    refusals = [record for record in caplog.records if record.name == "django.request"]
    assert [record.getMessage() for record in refusals] == [
        "Forbidden (Permission denied): /audit/"
    ]
    assert refusals[0].exc_info is None
    assert "Traceback" not in caplog.text


def _record_with(exception: Exception) -> logging.LogRecord:
    try:
        raise exception
    except type(exception):
        return logging.LogRecord(
            "django.request", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )


def test_other_errors_keep_their_traceback():
    record = _record_with(ValueError("broken"))

    assert RefusalWithoutTraceback().filter(record) is True
    assert record.exc_info[0] is ValueError
