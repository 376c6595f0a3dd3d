from django.apps import AppConfig


class AnalysisAppConfig(AppConfig):
    name = "apps.analysis"
    label = "analysis"
