"""Websocket stream of model version progress, for users who may train models.

The socket is a fast path only: the channel layer may drop messages, and a worker in
another process reaches this group only through a shared (Redis) layer, so the training
page also resynchronises from the REST API.
"""

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from .services import TRAINING_GROUP


class TrainingEventsConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        user = self.scope.get("user")
        allowed = user is not None and user.is_authenticated and await database_sync_to_async(
            user.has_perm
        )("training.train_models")
        if not allowed:
            await self.close(code=4403)
            return
        self.joined = True
        await self.channel_layer.group_add(TRAINING_GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        if getattr(self, "joined", False):
            await self.channel_layer.group_discard(TRAINING_GROUP, self.channel_name)

    async def training_progress(self, event):
        await self.send_json({"type": "training.progress", "version": event["version"]})
