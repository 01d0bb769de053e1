"""Console pages of a tenant's client secrets: the list (filters, keyset pages) for owners,
admins and compliance staff, and revoking one for owners and admins.

Reads go through tokens.selectors, always for the console's tenant; revoking through
tokens.services.client_secret_revoke, which audits it (and, for a relay token, ends the live
session it opened)."""

from __future__ import annotations

import logging
from urllib.parse import urlencode

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, QueryDict
from django.utils import timezone
from django.utils.formats import date_format

from realtime_platform.console import AUDIT_ROLES, MANAGE_ROLES, Console, console_view
from tenants.selectors import api_key_list
from tokens.console_forms import FILTER_FIELDS, ClientSecretFilterForm
from tokens.models import ClientSecret
from tokens.selectors import client_secret_get, client_secret_list, client_secret_page
from tokens.services import client_secret_revoke

logger = logging.getLogger(__name__)

PAGE_SIZE = 50
# A used relay token may still hold a live session, which revoking it ends.
REVOCABLE = (ClientSecret.Status.ACTIVE, ClientSecret.Status.USED)


@console_view(roles=AUDIT_ROLES, nav="secrets", methods=("GET", "HEAD"))
def secrets(request: HttpRequest, console: Console) -> HttpResponse:
    api_keys = list(api_key_list(tenant=console.tenant))
    bound = any(request.GET.get(name) for name in FILTER_FIELDS)
    form = ClientSecretFilterForm(
        request.GET if bound else None, api_keys=api_keys, time_zone_name=str(console.time_zone)
    )
    kept = form.active_values()
    now = timezone.now()
    page, after = None, request.GET.get("after") or None
    if not bound or form.is_valid():
        filters = form.selector_filters() if bound else {}
        listed = client_secret_list(tenant=console.tenant, now=now, **filters)
        page = client_secret_page(listed, tenant=console.tenant, limit=PAGE_SIZE, after=after)
        if page is None:  # a cursor edited by hand, or another tenant's secret id
            messages.error(request, "That page link is not valid any more: showing the newest secrets.")
            page, after = client_secret_page(listed, tenant=console.tenant, limit=PAGE_SIZE), None
    rows = [
        {"secret": secret, "status": secret.status_at(now), "revocable": secret.status_at(now) in REVOCABLE}
        for secret in (page.items if page else [])
    ]
    context = {
        "form": form,
        "rows": rows,
        "page": page,
        "filtered": bool(kept),
        "return_query": urlencode([*kept, ("after", after)] if after else kept),
        "older_query": urlencode([*kept, ("after", page.items[-1].pk)]) if page and page.has_more else "",
        "after": after,
        "newest_query": urlencode(kept),
    }
    return console.render("tokens/console/secrets.html", context)


def _back_to_list(console: Console, request: HttpRequest) -> HttpResponse:
    """The list as it was (same filter and page): only the list's own parameters survive."""
    sent = QueryDict(request.POST.get("return_query", ""))
    kept = [(name, sent[name]) for name in (*FILTER_FIELDS, "after") if sent.get(name)]
    response = console.redirect("secrets")
    if kept:
        response["Location"] += "?" + urlencode(kept)
    return response


@console_view(roles=MANAGE_ROLES, nav="secrets", methods=("POST",))
def secret_revoke(request: HttpRequest, console: Console, secret_id: str) -> HttpResponse:
    secret = client_secret_get(tenant=console.tenant, secret_id=secret_id)
    if secret is None:
        raise Http404("No such client secret.")
    if secret.status == ClientSecret.Status.REVOKED:
        messages.info(request, f"Secret {secret.pk} was already revoked.")
        return _back_to_list(console, request)
    secret = client_secret_revoke(secret=secret, actor=console.actor)
    logger.info("console secret revoked tenant=%s secret=%s", console.tenant.pk, secret.pk)
    if secret.kind == ClientSecret.Kind.RELAY:
        messages.success(
            request,
            f"Secret {secret.pk} (…{secret.last_four}) is revoked: it can no longer open a session, "
            "and a live session it opened is being ended.",
        )
    else:
        until = date_format(timezone.localtime(secret.expires_at), "Y-m-d H:i")
        messages.warning(
            request,
            f"Secret {secret.pk} (…{secret.last_four}) is marked revoked. OpenAI offers no way to revoke "
            f"its ephemeral keys, so this one stays usable at OpenAI until it expires ({until}, "
            f"{console.time_zone}). Use relay secrets where you need to cut sessions off.",
        )
    return _back_to_list(console, request)
