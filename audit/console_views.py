"""Console pages of the audit trail, for a tenant's owners, admins and compliance staff: the
viewer (filters, keyset pages, one event), the exports (CSV, JSON Lines, PDF report) and the
chain's integrity (verify now, signed checkpoints).

Reads go through audit.selectors, always for the console's tenant; downloads through
audit.exports.audit_export_response, which audits each export before its first byte."""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.http.response import HttpResponseBase

from audit.console_forms import FILTER_FIELDS, AuditExportForm, AuditFilterForm
from audit.exports import audit_export_response
from audit.selectors import (
    AuditFilter,
    audit_actions_seen,
    audit_chain_head,
    audit_checkpoint_list,
    audit_event_get,
    audit_event_page,
)
from audit.verification import audit_verify_tenant
from realtime_platform.console import AUDIT_ROLES, Console, console_view
from realtime_platform.errors import BadRequest

logger = logging.getLogger(__name__)

CHECKPOINTS_PER_PAGE = 50


def _filter_form(console: Console, data: Any) -> AuditFilterForm:
    bound = any(data.get(name) for name in FILTER_FIELDS)
    return AuditFilterForm(data if bound else None, time_zone_name=str(console.time_zone))


def _query(values: list[tuple[str, str]], **extra: str) -> str:
    return urlencode([*values, *extra.items()])


@console_view(roles=AUDIT_ROLES, nav="audit", methods=("GET", "HEAD"))
def audit_events(request: HttpRequest, console: Console) -> HttpResponse:
    """The trail, newest first, filtered; the export panel exports the same selection."""
    form = _filter_form(console, request.GET)
    filters = form.audit_filter() if form.is_bound else AuditFilter()
    kept = form.active_values()
    page = None
    if filters is not None:
        try:
            page = audit_event_page(tenant=console.tenant, filters=filters, cursor=request.GET.get("cursor"))
        except BadRequest as exc:  # a cursor edited by hand: start from the newest page
            messages.error(request, exc.message)
            page = audit_event_page(tenant=console.tenant, filters=filters)
    context = {
        "form": form,
        "page": page,
        "filtered": bool(kept),
        "kept": kept,
        "older_query": _query(kept, cursor=page.next_cursor) if page and page.next_cursor else "",
        "newer_query": _query(kept, cursor=page.prev_cursor) if page and page.prev_cursor else "",
        "newest_query": _query(kept) if request.GET.get("cursor") else "",
        "actions": audit_actions_seen(tenant=console.tenant),
        "export_form": AuditExportForm(initial={"format": "csv"}),
    }
    return console.render("audit/console/events.html", context)


@console_view(roles=AUDIT_ROLES, nav="audit", methods=("GET", "HEAD"))
def audit_event(request: HttpRequest, console: Console, seq: int) -> HttpResponse:
    event = audit_event_get(tenant=console.tenant, seq=seq)
    if event is None:
        raise Http404("No such audit event.")
    head = audit_chain_head(tenant=console.tenant)
    context = {
        "event": event,
        "details_json": json.dumps(event.details, indent=2, sort_keys=True, ensure_ascii=False),
        "previous_seq": seq - 1 if seq > 1 and audit_event_get(tenant=console.tenant, seq=seq - 1) else None,
        "next_seq": seq + 1 if head is not None and seq < head.seq else None,
    }
    return console.render("audit/console/event.html", context)


@console_view(roles=AUDIT_ROLES, nav="audit", methods=("POST",))
def audit_export(request: HttpRequest, console: Console) -> HttpResponseBase:
    """A download of the selection (POST: it records an `export.created` event)."""
    form = _filter_form(console, request.POST)
    filters = form.audit_filter() if form.is_bound else AuditFilter()
    export_form = AuditExportForm(request.POST)
    if filters is None or not export_form.is_valid():
        errors = [*form.errors.values(), *export_form.errors.values()]
        problems = [str(message) for messages_of_field in errors for message in messages_of_field]
        messages.error(request, "Nothing was exported: " + " ".join(problems))
        response = console.redirect("audit")
        if form.active_values():
            response["Location"] += "?" + _query(form.active_values())
        return response
    fmt = export_form.cleaned_data["format"]
    logger.info("console audit export tenant=%s format=%s", console.tenant.pk, fmt)
    return audit_export_response(
        request=request, tenant=console.tenant, actor=console.actor, fmt=fmt, filters=filters
    )


@console_view(roles=AUDIT_ROLES, nav="audit", methods=("GET", "HEAD"))
def audit_integrity(request: HttpRequest, console: Console) -> HttpResponse:
    """The chain head, its signed checkpoints (newest first, 50 a page), and, on request
    (`?verify=1`, a plain link: verifying changes nothing), the result of verifying it now."""
    report = audit_verify_tenant(tenant_id=console.tenant.pk) if request.GET.get("verify") == "1" else None
    checkpoints = audit_checkpoint_list(tenant=console.tenant)
    before = request.GET.get("before", "")
    if before.isdigit():
        checkpoints = checkpoints.filter(id__lt=int(before))
    shown = list(checkpoints[: CHECKPOINTS_PER_PAGE + 1])
    context = {
        "head": audit_chain_head(tenant=console.tenant),
        "report": report,
        "checkpoints": shown[:CHECKPOINTS_PER_PAGE],
        "older_checkpoints": (
            shown[CHECKPOINTS_PER_PAGE - 1].pk if len(shown) > CHECKPOINTS_PER_PAGE else None
        ),
        "paged": bool(before),
    }
    return console.render("audit/console/integrity.html", context)
