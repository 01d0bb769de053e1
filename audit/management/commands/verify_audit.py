from __future__ import annotations

from typing import Any

import orjson
from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.chain import chain_for
from audit.export_verification import audit_verify_export
from audit.verification import audit_verify_all, audit_verify_chain
from tenants.selectors import tenant_get


class Command(BaseCommand):
    help = (
        "Verify audit chains (all, or one tenant's) in the database, or export files offline "
        "(--export FILE). Prints OK, or the first broken seq and what is wrong; exits 1 if "
        "anything is broken."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", help="Only this tenant's chain (slug)")
        parser.add_argument("--platform", action="store_true", help="Only the platform chain")
        parser.add_argument(
            "--export", action="append", default=[], metavar="FILE", help="Verify an export file (repeatable)"
        )
        parser.add_argument("--json", action="store_true", help="One JSON object per result")

    def handle(self, *args: Any, **options: Any) -> None:
        results: list[Any] = []
        if options["export"]:
            results = [audit_verify_export(path) for path in options["export"]]
        elif options["tenant"]:
            tenant = tenant_get(slug=options["tenant"])
            if tenant is None:
                raise CommandError(f"no tenant with slug {options['tenant']!r}")
            results = [audit_verify_chain(chain=chain_for(tenant.pk))]
        elif options["platform"]:
            results = [audit_verify_chain(chain=chain_for(None))]
        else:
            results = audit_verify_all()
        broken = 0
        for result in results:
            ok = result.problem is None
            broken += not ok
            if options["json"]:
                body = result.as_dict() if hasattr(result, "as_dict") else vars(result)
                self.stdout.write(orjson.dumps(body, default=str).decode())
            else:
                self.stdout.write(result.summary())
                for warning in result.warnings:
                    self.stdout.write(f"  warning: {warning}")
        if broken:
            raise CommandError(f"{broken} of {len(results)} broken")
        if not results:
            self.stdout.write("No audit chains yet.")
