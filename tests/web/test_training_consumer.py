"""The training websocket: only users who may train models connect, and they receive the
progress that the training service sends to the "training" group."""

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer

from apps.training.services import TRAINING_GROUP
from .websockets import close_consumer_connections, connect  # noqa: F401  (autouse fixture)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


async def _connect(session_cookie: str | None):
    return await connect("/ws/training/", session_cookie)


async def _session_of(role, make_user, async_client) -> str:
    user = await sync_to_async(make_user)(role)
    await async_client.aforce_login(user)
    return async_client.cookies["sessionid"].value


async def test_anonymous_socket_is_closed(redis_url):
    communicator, connected, code = await _connect(None)
    assert not connected
    assert code == 4403


@pytest.mark.parametrize("role", [None, "annotator", "pathologist"])
async def test_non_admin_socket_is_closed(redis_url, make_user, async_client, role):
    communicator, connected, code = await _connect(await _session_of(role, make_user, async_client))
    assert not connected
    assert code == 4403


async def test_admin_receives_training_progress(redis_url, make_user, async_client):
    communicator, connected, _ = await _connect(await _session_of("admin", make_user, async_client))
    assert connected
    version = {
        "id": 3, "name": "model-3", "status": "running", "snapshot": 1,
        "metrics": [{"epoch": 1, "train_loss": 0.5}], "best_epoch": 1, "message": "",
    }
    await get_channel_layer().group_send(TRAINING_GROUP, {"type": "training.progress", "version": version})
    assert await communicator.receive_json_from(timeout=5) == {"type": "training.progress", "version": version}
    await communicator.disconnect()
