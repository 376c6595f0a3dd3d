"""The slide events websocket: who may connect, and what a member of the group receives."""

import pytest
import pytest_asyncio
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from apps.slides.consumers import slide_group
from nephroweb.asgi import application

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest_asyncio.fixture(autouse=True)
async def close_consumer_connections():
    """Close the database connection of the consumers' worker thread after each test, or
    it keeps the test database open and blocks its removal."""
    yield
    from channels.db import database_sync_to_async
    from django.db import connections

    await database_sync_to_async(connections.close_all)()


async def _connect(session_cookie: str | None):
    headers = [(b"origin", b"http://127.0.0.1")]
    if session_cookie:
        headers.append((b"cookie", f"sessionid={session_cookie}".encode()))
    communicator = WebsocketCommunicator(application, "/ws/slides/5/events/", headers=headers)
    connected, code = await communicator.connect()
    return communicator, connected, code


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
