from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from audit.actors import Actor
from realtime_platform.durations import parse_duration
from realtime_platform.errors import ApplicationError
from tenants.models import ALL_SCOPES
from tenants.selectors import tenant_get
from tenants.services import api_key_create


class Command(BaseCommand):
    help = (
        "Create an API key for a tenant. The raw key is printed alone on the last line of stdout, "
        "once: it is not stored and cannot be shown again."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug", help="Tenant slug")
        parser.add_argument("--name", required=True)
        parser.add_argument(
            "--scopes",
            nargs="+",
            default=list(ALL_SCOPES),
            help=f"Scopes (default: all of {' '.join(ALL_SCOPES)})",
        )
        parser.add_argument("--expires-in", default="", help="e.g. 90d, 12h (default: never)")

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = tenant_get(slug=options["slug"])
        if tenant is None:
            raise CommandError(f"no tenant with slug {options['slug']!r}")
        expires_at = None
        if options["expires_in"]:
            try:
                expires_at = timezone.now() + parse_duration(options["expires_in"])
            except ValueError as exc:
                raise CommandError(str(exc)) from exc
        scopes = [s for item in options["scopes"] for s in item.split(",") if s]
        try:
            issued = api_key_create(
                tenant=tenant,
                name=options["name"],
                scopes=scopes,
                expires_at=expires_at,
                actor=Actor.system("manage.py create_api_key"),
            )
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        self.stderr.write(
            f"Created key {issued.api_key.prefix}… for tenant {tenant.slug} with scopes "
            f"{' '.join(issued.api_key.scopes)}. Store it now: it is shown only once."
        )
        self.stdout.write(issued.plaintext)
