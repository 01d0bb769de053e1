"""Console pages of relayed sessions: the list (live by default, refreshed every 10 seconds;
filters, keyset pages) for owners, admins and compliance staff, and the kill switch for owners
and admins: terminate one session, or every live one (of the tenant or of one API key).

Reads go through relay.selectors, always for the console's tenant; terminating through
relay.services, which audits it and tells the sessions to close over the channel layer, wherever
they run, once the transaction commits."""

from __future__ import annotations

import logging
from decimal import Decimal
from urllib.parse import urlencode

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, QueryDict

from realtime_platform.console import AUDIT_ROLES, MANAGE_ROLES, Console, console_view, is_htmx
from relay.console_forms import FILTER_FIELDS, SessionFilterForm, TerminateAllForm
from relay.models import RealtimeSession
from relay.selectors import (
    realtime_session_filter,
    realtime_session_get,
    realtime_session_live_count,
    realtime_session_page,
)
from relay.services import relay_session_terminate, relay_sessions_terminate_all
from tenants.selectors import api_key_list

logger = logging.getLogger(__name__)

PAGE_SIZE = 50


@console_view(roles=AUDIT_ROLES, nav="sessions", methods=("GET", "HEAD"))
def sessions(request: HttpRequest, console: Console) -> HttpResponse:
    api_keys = list(api_key_list(tenant=console.tenant))
    bound = any(request.GET.get(name) for name in FILTER_FIELDS)
    form = SessionFilterForm(
        request.GET if bound else None, api_keys=api_keys, time_zone_name=str(console.time_zone)
    )
    kept = form.active_values()
    page, after = None, request.GET.get("after") or None
    if not bound or form.is_valid():
        listed = realtime_session_filter(tenant=console.tenant, **form.selector_filters())
        page = realtime_session_page(listed, tenant=console.tenant, limit=PAGE_SIZE, after=after)
        if page is None:  # a cursor edited by hand, or another tenant's session id
            messages.error(request, "That page link is not valid any more: showing the newest sessions.")
            page, after = realtime_session_page(listed, tenant=console.tenant, limit=PAGE_SIZE), None
    rows = [
        {
            "session": session,
            "audio_minutes": (Decimal(session.audio_in_ms + session.audio_out_ms) / 60_000).quantize(
                Decimal("0.01")
            ),
            "tokens": session.input_tokens + session.output_tokens,
        }
        for session in (page.items if page else [])
    ]
    context = {
        "form": form,
        "page": page,
        "rows": rows,
        "filtered": bool(kept),
        "live_count": realtime_session_live_count(tenant=console.tenant),
        "return_query": urlencode([*kept, ("after", after)] if after else kept),
        "older_query": urlencode([*kept, ("after", page.items[-1].pk)]) if page and page.has_more else "",
        "after": after,
        "newest_query": urlencode(kept),
        "terminate_all_form": TerminateAllForm(api_keys=[k for k in api_keys if not k.revoked_at]),
    }
    if is_htmx(request):  # the list refreshing itself
        return console.render("relay/console/_sessions_table.html", context)
    return console.render("relay/console/sessions.html", context)


def _back_to_list(console: Console, request: HttpRequest) -> HttpResponse:
    """The list as it was (same filter and page): only the list's own parameters survive."""
    sent = QueryDict(request.POST.get("return_query", ""))
    kept = [(name, sent[name]) for name in (*FILTER_FIELDS, "after") if sent.get(name)]
    response = console.redirect("sessions")
    if kept:
        response["Location"] += "?" + urlencode(kept)
    return response


@console_view(roles=MANAGE_ROLES, nav="sessions", methods=("POST",))
def session_terminate(request: HttpRequest, console: Console, session_id: str) -> HttpResponse:
    session = realtime_session_get(tenant=console.tenant, session_id=session_id)
    if session is None:
        raise Http404("No such session.")
    if session.status != RealtimeSession.Status.ACTIVE:
        messages.info(request, f"Session {session.pk} had already ended.")
        return _back_to_list(console, request)
    relay_session_terminate(session=session, actor=console.actor)
    logger.info("console session terminated tenant=%s session=%s", console.tenant.pk, session.pk)
    messages.success(request, f"Session {session.pk} is being ended: it closes within a second or two.")
    return _back_to_list(console, request)


@console_view(roles=MANAGE_ROLES, nav="sessions", methods=("POST",))
def sessions_terminate_all(request: HttpRequest, console: Console) -> HttpResponse:
    api_keys = [key for key in api_key_list(tenant=console.tenant) if not key.revoked_at]
    form = TerminateAllForm(request.POST, api_keys=api_keys)
    if not form.is_valid():
        messages.error(request, "Choose an API key of this tenant, or every key.")
        return _back_to_list(console, request)
    api_key_id = form.cleaned_data["api_key"]
    count = relay_sessions_terminate_all(tenant=console.tenant, actor=console.actor, api_key_id=api_key_id)
    scope = "" if api_key_id is None else f" of “{next(k.name for k in api_keys if k.pk == api_key_id)}”"
    logger.info(
        "console sessions terminated tenant=%s api_key=%s count=%s", console.tenant.pk, api_key_id, count
    )
    if count == 1:
        messages.success(request, f"1 live session{scope} is being ended.")
    elif count:
        messages.success(request, f"{count} live sessions{scope} are being ended.")
    else:
        messages.info(request, f"There was no live session{scope} to end.")
    return _back_to_list(console, request)
