"""The slide events websocket: who may connect, and what a member of the group receives."""

import pytest
from channels.layers import get_channel_layer

from apps.slides.consumers import slide_group
from .websockets import close_consumer_connections, connect  # noqa: F401  (autouse fixture)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


async def _connect(session_cookie: str | None):
    return await connect("/ws/slides/5/events/", session_cookie)


async def test_anonymous_socket_is_closed(redis_url):
    communicator, connected, code = await _connect(None)
    assert not connected
    assert code == 4403


async def test_annotator_receives_group_events(redis_url, make_user, async_client):
    from asgiref.sync import sync_to_async

    user = await sync_to_async(make_user)("annotator")
    await async_client.aforce_login(user)
    communicator, connected, _ = await _connect(async_client.cookies["sessionid"].value)
    assert connected
    run = {"id": 1, "slide": 5, "status": "running", "tiles_done": 2, "tiles_total": 9}
    await get_channel_layer().group_send(slide_group(5), {"type": "run.progress", "run": run})
    assert await communicator.receive_json_from(timeout=5) == {"type": "run.progress", "run": run}
    await communicator.disconnect()


async def test_user_without_role_is_closed(redis_url, make_user, async_client):
    from asgiref.sync import sync_to_async

    user = await sync_to_async(make_user)(None)
    await async_client.aforce_login(user)
    communicator, connected, code = await _connect(async_client.cookies["sessionid"].value)
    assert not connected
    assert code == 4403


async def test_review_change_reaches_slide_group(redis_url, make_user):
    """A committed review change is published to the slide's group for other reviewers."""
    from asgiref.sync import sync_to_async
    from shapely.geometry import box

    from apps.annotations.geometry import instance_row
    from apps.review import services
    from tests.conftest import create_slide_record

    def create():
        slide = create_slide_record("s", 100, 100)
        instance = instance_row(box(1, 1, 9, 9), slide=slide, mpp=0.5, source="sam")
        instance.save()
        return slide, instance, make_user("annotator", username="ann")

    slide, instance, user = await sync_to_async(create)()
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(slide_group(slide.pk), channel)
    await sync_to_async(services.relabel)(instance.pk, user=user, version=1, class_name="vessel")
    message = await layer.receive(channel)
    assert message["type"] == "instance.changed"
    assert message["instance"]["id"] == instance.pk
    assert message["instance"]["version"] == 2
    assert message["instance"]["class_name"] == "vessel"
    assert message["instance"]["review_state"] == "accepted"
    assert message["instance"]["by"] == "ann"
