"""Helpers for websocket tests against the real ASGI application."""

import pytest_asyncio
from channels.testing import WebsocketCommunicator

from nephroweb.asgi import application


@pytest_asyncio.fixture(autouse=True)
async def close_consumer_connections():
    """Close the database connection of the consumers' worker thread after each test, or
    it keeps the test database open and blocks its removal."""
    yield
    from channels.db import database_sync_to_async
    from django.db import connections

    await database_sync_to_async(connections.close_all)()


async def connect(path: str, session_cookie: str | None):
    """Open a websocket to ``path`` as the session (or anonymously); return
    (communicator, connected, close code)."""
    headers = [(b"origin", b"http://127.0.0.1")]
    if session_cookie:
        headers.append((b"cookie", f"sessionid={session_cookie}".encode()))
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, code = await communicator.connect()
    return communicator, connected, code
