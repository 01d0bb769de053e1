from django.apps import AppConfig


class RealtimePlatformConfig(AppConfig):
    name = "realtime_platform"
    verbose_name = "Realtime Platform"

    def ready(self) -> None:
        from realtime_platform import checks  # noqa: F401  (registers the deploy checks)
