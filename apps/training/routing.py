from django.urls import path

from .consumers import TrainingEventsConsumer

websocket_urlpatterns = [
    path("ws/training/", TrainingEventsConsumer.as_asgi()),
]
