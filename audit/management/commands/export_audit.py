from __future__ import annotations

import sys
from typing import Any

import orjson
from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from audit.actors import Actor
from audit.chain import chain_for
from audit.exports import audit_export_start, audit_export_write, audit_report_pdf, checkpoint_as_dict
from audit.selectors import audit_checkpoint_list, audit_filter_from_params
from audit.services import audit_record
from realtime_platform.errors import ApplicationError
from tenants.selectors import tenant_get

FILTER_OPTIONS = ("since", "until", "actor", "actor_type", "action", "target_type", "target_id", "request_id")


class Command(BaseCommand):
    help = (
        "Export a tenant's audit trail as CSV or JSON Lines (streamed, with a signed manifest and "
        "trailer; check it later with `verify_audit --export FILE`), a PDF summary report, or the "
        "tenant's signed checkpoints (--checkpoints, JSON Lines). Every export is itself audited."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("tenant", help="Tenant slug")
        parser.add_argument("--format", choices=("csv", "jsonl", "pdf"), default="csv")
        parser.add_argument("--output", "-o", required=True, help="File to write, or - for stdout")
        parser.add_argument("--checkpoints", action="store_true", help="Export the signed checkpoints")
        parser.add_argument("--no-progress", action="store_true", help="No progress bar on stderr")
        parser.add_argument("--since", help="From this date or date-time (inclusive, UTC unless given)")
        parser.add_argument("--until", help="Up to this date (the whole day) or date-time (exclusive)")
        parser.add_argument("--actor", help="Actor label: a username, an API key prefix, a system job")
        parser.add_argument("--actor-type", dest="actor_type", choices=("user", "api_key", "system"))
        parser.add_argument("--action", help="e.g. key.revoked")
        parser.add_argument("--target-type", dest="target_type", help="e.g. tenants.apikey")
        parser.add_argument("--target-id", dest="target_id")
        parser.add_argument("--request-id", dest="request_id")

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = tenant_get(slug=options["tenant"])
        if tenant is None:
            raise CommandError(f"no tenant with slug {options['tenant']!r}")
        actor = Actor.system("manage.py export_audit")
        try:
            filters = audit_filter_from_params({k: options[k] or "" for k in FILTER_OPTIONS})
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        out = sys.stdout.buffer if options["output"] == "-" else open(options["output"], "wb")  # noqa: SIM115
        try:
            if options["checkpoints"]:
                self._checkpoints(tenant, actor, out)
            elif options["format"] == "pdf":
                report = audit_report_pdf(tenant=tenant, actor=actor, filters=filters)
                out.write(report.pdf)
                verdict = "verified OK" if report.verification.ok else "BROKEN"
                self.stderr.write(
                    f"Wrote the PDF report of {report.total:,} events (chain {verdict}); "
                    f"audit event #{report.event.seq}."
                )
            else:
                self._rows(tenant, actor, options, filters, out)
        finally:
            if out is not sys.stdout.buffer:
                out.close()

    def _rows(self, tenant: Any, actor: Actor, options: dict[str, Any], filters: Any, out: Any) -> None:
        export = audit_export_start(tenant=tenant, actor=actor, fmt=options["format"], filters=filters)
        total = export.manifest["row_count"]
        with tqdm(
            total=total, unit="rows", unit_scale=True, file=sys.stderr, disable=options["no_progress"]
        ) as bar:
            trailer = audit_export_write(
                export, out, progress=lambda n: bar.update(min(n, max(total - bar.n, 0)))
            )
        manifest = export.manifest
        span = f"seq {manifest['first_seq']}..{manifest['last_seq']}, " if trailer["row_count"] else ""
        self.stderr.write(
            f"Exported {trailer['row_count']:,} rows ({span}filter: {filters.describe()}) of "
            f"{manifest['chain']}; audit event #{export.event.seq}."
        )

    def _checkpoints(self, tenant: Any, actor: Actor, out: Any) -> None:
        checkpoints = list(audit_checkpoint_list(tenant=tenant).order_by("id"))
        event = audit_record(
            tenant=tenant,
            actor=actor,
            action="export.created",
            target_type="audit.checkpoints",
            target_id=chain_for(tenant.pk),
            details={"format": "checkpoints", "row_count": len(checkpoints)},
        )
        for checkpoint in checkpoints:
            out.write(orjson.dumps(checkpoint_as_dict(checkpoint)) + b"\n")
        self.stderr.write(f"Exported {len(checkpoints)} signed checkpoint(s); audit event #{event.seq}.")
