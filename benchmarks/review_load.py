"""Several reviewers at once on 127.0.0.1: throughput, p95 latency, errors and lost edits.

Like ``benchmarks/api_latency.py``, the script creates a throw-away PostgreSQL database on
the server of DATABASE_URL, imports a slide, bulk-creates pending polygon instances and
serves the app with daphne on a free 127.0.0.1 port. Each of ``--reviewers`` client
threads signs in as its own pathologist and works for ``--seconds`` seconds the way the
review page does. It loads the viewport around an object and one deep-zoom tile, and
reads the object. Then it accepts the object if it is pending, else relabels it or edits
its outline, sending the version it read.

Most objects belong to one reviewer each. A few are shared by all, so two reviewers
sometimes change the same object at once: the later change must get 409 Conflict, which
is counted as a conflict, not as an error. At the end every object's row must be what
the last successful change returned. So an edit that got a 200 response and was then
lost, or overwritten without a conflict, counts as lost.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/review_load.py --write-docs
"""

import argparse
import json
import logging
import os
import shutil
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.api_latency import (  # noqa: E402
    DEFAULT_SLIDE,
    DOCS_PATH,
    machine_description,
    populate_instances,
    summarise,
    throwaway_database,
    write_marked_section,
)

DOCS_BEGIN = "<!-- review-load:begin -->"
DOCS_END = "<!-- review-load:end -->"
ACTIONS = ("accept", "relabel", "edit")
RELABEL_CLASSES = ("proximal tubule", "distal tubule", "glomerulus", "vessel")
VIEW_MARGIN_PX = 400

logger = logging.getLogger("benchmarks.review_load")


def reviewer_cookies(count: int) -> list[dict]:
    """Create ``count`` pathologists with signed-in sessions; return their session cookies."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.test import Client

    group = Group.objects.get(name="pathologist")
    cookies = []
    for index in range(count):
        user = get_user_model().objects.create_user(username=f"load-reviewer-{index}")
        user.groups.add(group)
        client = Client()
        client.force_login(user)
        cookies.append({name: morsel.value for name, morsel in client.cookies.items()})
    return cookies


def edited_outline(geometry: dict) -> dict:
    """Return the polygon's outer ring scaled by 0.98 about the mean of its vertices."""
    ring = np.asarray(geometry["coordinates"][0], dtype=float)
    center = ring[:-1].mean(axis=0)
    scaled = center + (ring - center) * 0.98
    return {"type": "Polygon", "coordinates": [scaled.round(2).tolist()]}


class Reviewer:
    """One reviewer's session: its own objects, the shared ones, and what it recorded."""

    def __init__(self, base_url, cookies, slide_id, own_ids, shared_ids, boxes, seed):
        self.base_url = base_url
        self.cookies = cookies
        self.slide_id = slide_id
        self.own_ids = own_ids
        self.shared_ids = shared_ids
        self.boxes = boxes
        self.rng = np.random.default_rng(seed)
        self.records: list[dict] = []
        # Successful changes: (instance id, version, review state, class name).
        self.changes: list[tuple[int, int, str, str]] = []

    def work(
        self, deadline: float, tile_paths: list[str], shared_share: float, think_s: float
    ) -> None:
        import requests

        with requests.Session() as session:
            session.cookies.update(self.cookies)
            page = session.get(f"{self.base_url}/slides/{self.slide_id}/", timeout=60)
            page.raise_for_status()
            headers = {"X-CSRFToken": session.cookies.get("csrftoken", "")}
            turn = 0
            while time.monotonic() < deadline:
                shared = self.shared_ids and self.rng.random() < shared_share
                pool = self.shared_ids if shared else self.own_ids
                instance_id = int(pool[turn % len(pool)] if not shared else self.rng.choice(pool))
                turn += 1
                self._view(session, instance_id, tile_paths[turn % len(tile_paths)])
                feature = self._get(session, "instance", f"/api/instances/{instance_id}/")
                if feature is None:
                    continue
                # A reviewer looks at the object before deciding; others may change it meanwhile.
                time.sleep(think_s)
                # As on the review page: accept what is pending, else relabel or edit it.
                if feature["properties"]["review_state"] == "pending":
                    action = "accept"
                else:
                    action = ("relabel", "edit")[turn % 2]
                self._change(session, headers, instance_id, action, feature, shared)

    def _timed(self, session, kind: str, method: str, path: str, **kwargs):
        started = time.perf_counter()
        response = session.request(method, self.base_url + path, timeout=60, **kwargs)
        body = response.content
        self.records.append({
            "kind": kind, "status": response.status_code,
            "latency_ms": (time.perf_counter() - started) * 1000.0, "bytes": len(body),
        })
        return response

    def _get(self, session, kind: str, path: str):
        response = self._timed(session, kind, "GET", path)
        return response.json() if response.status_code == 200 else None

    def _view(self, session, instance_id: int, tile_path: str) -> None:
        x_min, y_min, x_max, y_max = self.boxes[instance_id]
        bbox = ",".join(f"{value:.0f}" for value in (
            x_min - VIEW_MARGIN_PX, y_min - VIEW_MARGIN_PX,
            x_max + VIEW_MARGIN_PX, y_max + VIEW_MARGIN_PX,
        ))
        self._get(session, "viewport", f"/api/slides/{self.slide_id}/instances/?bbox={bbox}")
        self._timed(session, "tile", "GET", tile_path)

    def _change(self, session, headers, instance_id, action, feature, shared) -> None:
        body = {"version": feature["properties"]["version"]}
        if action == "relabel":
            body["class_name"] = str(self.rng.choice(RELABEL_CLASSES))
        elif action == "edit":
            body["geometry"] = edited_outline(feature["geometry"])
        response = self._timed(
            session, action, "POST", f"/api/instances/{instance_id}/{action}/",
            json=body, headers=headers,
        )
        self.records[-1]["shared"] = shared
        if response.status_code == 200:
            properties = response.json()["properties"]
            self.changes.append((
                instance_id, properties["version"], properties["review_state"],
                properties["class_name"],
            ))


def lost_edits(changes: list[tuple[int, int, str, str]]) -> dict:
    """Compare every changed row with the newest change that got a 200 response.

    Returns how many objects were changed, how many rows differ from their newest
    successful change (lost edits), and how many versions were returned twice. A version
    returned to two reviewers means both got a success response for the same change,
    which the conflict check must prevent.
    """
    from apps.annotations.models import Instance

    newest: dict[int, tuple[int, str, str]] = {}
    versions_seen: dict[tuple[int, int], int] = defaultdict(int)
    for instance_id, version, state, class_name in changes:
        versions_seen[(instance_id, version)] += 1
        if instance_id not in newest or version > newest[instance_id][0]:
            newest[instance_id] = (version, state, class_name)
    rows = Instance.objects.in_bulk(list(newest))
    lost = [
        instance_id for instance_id, expected in newest.items()
        if (rows[instance_id].version, rows[instance_id].review_state, rows[instance_id].class_name)
        != expected
    ]
    return {
        "objects_changed": len(newest),
        "lost_edits": len(lost),
        "lost_edit_ids": lost[:20],
        "versions_answered_twice": sum(count > 1 for count in versions_seen.values()),
    }


def measure(base_url: str, slide, cookies: list[dict], *, seconds: float,
            shared_objects: int, shared_share: float, think_s: float) -> dict:
    """Run the reviewers against ``base_url`` and return the summary per request kind."""
    import requests

    from apps.annotations.models import Instance

    rows = list(
        Instance.objects.filter(slide=slide).order_by("id")
        .values_list("id", "x_min_level0", "y_min_level0", "x_max_level0", "y_max_level0")
    )
    boxes = {row[0]: row[1:] for row in rows}
    ids = [row[0] for row in rows]
    shared_ids, own_pool = ids[:shared_objects], ids[shared_objects:]
    metadata = requests.get(f"{base_url}/api/slides/{slide.pk}/tiles/", cookies=cookies[0],
                            timeout=60).json()
    level = metadata["levels"] - 1
    tile_paths = [f"/api/slides/{slide.pk}/tiles/{level}/{x}/{y}.jpg"
                  for x in range(3) for y in range(3)]
    reviewers = [
        Reviewer(base_url, session_cookies, slide.pk, own_pool[index::len(cookies)], shared_ids,
                 boxes, seed=index)
        for index, session_cookies in enumerate(cookies)
    ]
    deadline = time.monotonic() + seconds
    started = time.monotonic()
    threads = [
        threading.Thread(target=reviewer.work,
                         args=(deadline, tile_paths, shared_share, think_s), daemon=True)
        for reviewer in reviewers
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started

    records = [record for reviewer in reviewers for record in reviewer.records]
    by_kind = {}
    for kind in ("viewport", "tile", "instance", *ACTIONS):
        kind_records = [record for record in records if record["kind"] == kind]
        summary = summarise(kind_records)
        # A 409 on a shared object is the expected response to a concurrent change.
        conflicts = sum(
            record["status"] == 409 and record.get("shared", False) for record in kind_records
        )
        summary["conflicts"] = conflicts
        summary["errors"] -= conflicts
        statuses = defaultdict(int)
        for record in kind_records:
            statuses[str(record["status"])] += 1
        summary["statuses"] = dict(sorted(statuses.items()))
        by_kind[kind] = summary
    changes = [change for reviewer in reviewers for change in reviewer.changes]
    return {
        "seconds": round(elapsed, 1),
        "requests": len(records),
        "requests_per_second": round(len(records) / elapsed, 1),
        "changes_per_second": round(len(changes) / elapsed, 2),
        "errors": sum(summary["errors"] for summary in by_kind.values()),
        "conflicts": sum(summary["conflicts"] for summary in by_kind.values()),
        "kinds": by_kind,
        **lost_edits(changes),
    }


def run(args, data_dir: Path) -> dict:
    """Migrate the empty database, fill it, serve it, drive the reviewers, return the result."""
    import django
    from django.core.management import call_command
    from django.db import connections

    from tests.processes import child_environment, web_server

    django.setup()
    call_command("migrate", verbosity=0)

    from apps.slides.services import import_slide

    slide = import_slide(args.slide)
    created = populate_instances(slide, args.instances)
    connections["default"].cursor().execute("ANALYZE annotations_instance")
    cookies = reviewer_cookies(args.reviewers)
    env = child_environment(data_dir, NEPHROWEB_TILE_CACHE_URL="",
                            OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    env.pop("REDIS_URL", None)
    with web_server(env, data_dir / "web.log") as base_url:
        measured = measure(base_url, slide, cookies, seconds=args.seconds,
                           shared_objects=args.shared_objects, shared_share=args.shared_share,
                           think_s=args.think_ms / 1000.0)
    if measured["errors"]:
        kept_log = REPO / "var" / "benchmarks" / "review_load_web.log"
        kept_log.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data_dir / "web.log", kept_log)
        logger.warning("%d requests failed; the server log is in %s", measured["errors"], kept_log)
    connections.close_all()
    return {
        "slide": Path(args.slide).name,
        "instances": created,
        "reviewers": args.reviewers,
        "shared_objects": args.shared_objects,
        "shared_share": args.shared_share,
        "think_ms": args.think_ms,
        "machine": machine_description(),
        **measured,
    }


def docs_section(result: dict) -> str:
    """Format ``result`` as the markdown section of docs/benchmarks.md (markers included)."""
    rows = "\n".join(
        f"| {kind} | {row['requests']} | {row['errors']} | {row['conflicts']} | {row['p50_ms']} "
        f"| {row['p95_ms']} | {row['max_ms']} |"
        for kind, row in result["kinds"].items()
    )
    return f"""{DOCS_BEGIN}
## Reviewers under load

Do edits survive several reviewers at once? `benchmarks/review_load.py` serves the app
with daphne on 127.0.0.1 over a throw-away PostgreSQL database holding
{result['instances']} pending objects on `{result['slide']}`. {result['reviewers']}
reviewers, each signed in as their own pathologist, work for {result['seconds']} s. Each
round loads the viewport around an object and a deep-zoom tile and reads the object. It
then pauses {result['think_ms']:.0f} ms, as a reviewer looking at the object would. Last,
it accepts the object if it is pending, else relabels it or edits its outline, sending
the version it read. {result['shared_objects']}
objects are shared by all reviewers and get {100 * result['shared_share']:.0f} % of the
rounds, so concurrent changes of one object happen. The rest belong to one reviewer each.

- Command: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/review_load.py --write-docs`
- Machine: {result['machine']}; other jobs may have shared the cores
- Throughput: {result['requests']} requests, {result['requests_per_second']} per second;
  {result['changes_per_second']} successful changes per second
- Errors: {result['errors']}; conflicts (409 responses) on shared objects: {result['conflicts']}
- Lost edits: {result['lost_edits']} of {result['objects_changed']} objects changed (every
  row equals the newest successful change of it); versions returned to two reviewers:
  {result['versions_answered_twice']}

| request | count | errors | conflicts | p50 ms | p95 ms | max ms |
|---|---|---|---|---|---|---|
{rows}

A conflict is the expected response when another reviewer changed the object after this
one read it. The review page then shows the current object and who changed it.

The first run of this benchmark, with 3 reviewers, got HTTP 500 for about a quarter of
its requests: PostgreSQL refused new clients ("too many clients already"). Under ASGI
each request may run on another thread, and with `CONN_MAX_AGE` at 60 s every thread kept
its own connection open. Connections are now closed after each request, as Django's
documentation advises for ASGI.
{DOCS_END}"""


def write_docs(result: dict, path: Path = DOCS_PATH) -> None:
    """Replace the review-load section of ``path`` with ``result``, or append one."""
    write_marked_section(path, docs_section(result), DOCS_BEGIN, DOCS_END)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slide", default=str(DEFAULT_SLIDE), help="slide file to import")
    parser.add_argument("--instances", type=int, default=20_000, help="pending objects")
    parser.add_argument("--reviewers", type=int, default=4, help="concurrent reviewers")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long they work")
    parser.add_argument("--shared-objects", type=int, default=5,
                        help="objects that every reviewer may change")
    parser.add_argument("--shared-share", type=float, default=0.2,
                        help="share of rounds spent on the shared objects")
    parser.add_argument("--think-ms", type=float, default=300.0,
                        help="pause between reading an object and changing it")
    parser.add_argument("--write-docs", action="store_true",
                        help=f"write the result into {DOCS_PATH.relative_to(REPO)}")
    args = parser.parse_args(argv)
    if args.reviewers < 1 or args.seconds <= 0 or args.instances <= args.shared_objects:
        parser.error("--reviewers and --seconds must be positive, and --instances larger "
                     "than --shared-objects.")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    server_url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    if not server_url.startswith("postgres"):
        parser.error(f"DATABASE_URL must name a PostgreSQL server, got {server_url!r}.")
    with throwaway_database(server_url, "nephroweb_review_load") as data_dir:
        result = run(args, data_dir)
    if args.write_docs:
        write_docs(result)
    print(json.dumps(result, indent=2))
    return 0 if result["errors"] == 0 and result["lost_edits"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
