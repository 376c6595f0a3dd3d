"""A running product for browser tests: daphne and a Celery worker on the test database,
driven through Debian's Chromium by Playwright."""

import json
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.processes import celery_worker, child_environment, web_server
from tests.sam_factory import save_tiny_checkpoint
from tests.web.conftest import FAST_PROPOSALS, FAST_SEGMENTATION

CHROMIUM = "/usr/bin/chromium"
# Flags for a closed network: no background requests to outside hosts.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


PASSWORD = "pw-for-tests-1"


def sign_in(page, url, username, password=PASSWORD):
    """Sign in through the login form and wait for the slide list."""
    page.goto(f"{url}/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/$"))


def cmu_slide_record(shared_data):
    """Create the Slide row of the real cmu-1-small-region.svs, without importing it."""
    from tests.conftest import create_slide_record

    return create_slide_record(
        name="cmu-1-small-region", width_px=2220, height_px=2967, mpp=0.499,
        file_path=str(shared_data / "wsi" / "cmu-1-small-region.svs"),
    )


def open_run_panel(page, url, run, username):
    """Sign in as ``username``, open the run's slide and wait until its run panel shows it."""
    sign_in(page, url, username)
    page.goto(f"{url}/slides/{run.slide_id}/")
    page.wait_for_function(
        f"document.querySelector('#run-status').textContent.startsWith('SAM proposal run {run.pk}')"
    )


def in_thread(function, *args, **kwargs):
    """Run database work outside Playwright's event loop, which Django's ORM refuses.

    The thread closes its connection before it ends, so the test database can be dropped.
    """
    from django.db import connections

    def work():
        try:
            return function(*args, **kwargs)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(work).result()


@pytest.fixture
def live_product(transactional_db, redis_url, tmp_path):
    """URL of the web server, with a worker beside it, both on the test database."""
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny_sam.pth")
    env = child_environment(
        tmp_path,
        REDIS_URL=redis_url,
        NEPHROWEB_SAM_CHECKPOINT=str(checkpoint),
        NEPHROWEB_PROPOSALS_JSON=json.dumps(FAST_PROPOSALS),
        NEPHROWEB_SEGMENTATION_JSON=json.dumps(FAST_SEGMENTATION),
    )
    with celery_worker(env, tmp_path / "worker.log"), web_server(env, tmp_path / "web.log") as url:
        yield url


@pytest.fixture
def browser_page(tmp_path):
    if not os.path.exists(CHROMIUM) or shutil.which("chromium") is None:
        pytest.fail(f"{CHROMIUM} is missing; `make test` installs Debian's chromium package.")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        page = context.new_page()
        try:
            yield page
        finally:
            context.close()
            browser.close()
