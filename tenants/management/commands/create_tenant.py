from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.actors import Actor
from realtime_platform.errors import ApplicationError
from tenants.selectors import plan_get
from tenants.services import tenant_create


class Command(BaseCommand):
    help = "Create a tenant. Prints its slug on the last line of stdout."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--name", default="")
        parser.add_argument("--plan", default="", help="Plan slug (default: the 'default' plan)")

    def handle(self, *args: Any, **options: Any) -> None:
        plan = None
        if options["plan"]:
            plan = plan_get(slug=options["plan"])
            if plan is None:
                raise CommandError(f"no plan with slug {options['plan']!r}")
        try:
            tenant = tenant_create(
                slug=options["slug"],
                name=options["name"],
                plan=plan,
                actor=Actor.system("manage.py create_tenant"),
            )
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(tenant.slug)
