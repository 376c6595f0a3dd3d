from django.apps import AppConfig


class TrainingAppConfig(AppConfig):
    name = "apps.training"
    label = "training"
