"""Websocket stream of a slide's events (proposal progress; reviews later).

The socket is a fast path only: the Redis layer drops messages past its capacity, so the
browser also resynchronises from the REST API.
"""

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer


def slide_group(slide_id: int) -> str:
    return f"slide_{slide_id}"


class SlideEventsConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        user = self.scope.get("user")
        self.slide_id = int(self.scope["url_route"]["kwargs"]["slide_id"])
        allowed = user is not None and user.is_authenticated and await database_sync_to_async(
            user.has_perm
        )("slides.view_slide")
        if not allowed:
            await self.close(code=4403)
            return
        await self.channel_layer.group_add(slide_group(self.slide_id), self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        if hasattr(self, "slide_id"):
            await self.channel_layer.group_discard(slide_group(self.slide_id), self.channel_name)

    async def run_progress(self, event):
        await self.send_json({"type": "run.progress", "run": event["run"]})

    async def instance_changed(self, event):
        await self.send_json({"type": "instance.changed", "instance": event["instance"]})
