from django.urls import path

from .consumers import SlideEventsConsumer

websocket_urlpatterns = [
    path("ws/slides/<int:slide_id>/events/", SlideEventsConsumer.as_asgi()),
]
