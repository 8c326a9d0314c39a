from django.apps import AppConfig


class ReapiConfig(AppConfig):
    name = "reapi"
    default_auto_field = "django.db.models.BigAutoField"
