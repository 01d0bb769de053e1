"""The console framework's invariants, checked over every console URL there is (so pages added
later are held to them too): each per-tenant page is behind `console_view`, and the menu offers a
page to exactly the roles its guard lets in."""

from __future__ import annotations

from django.urls import URLPattern, URLResolver, get_resolver, reverse

from realtime_platform.console import NAV

UNGUARDED = {"console:home", "console:login", "console:logout"}  # not per-tenant; they guard themselves


def console_routes() -> list[tuple[str, URLPattern]]:
    """(namespaced name, pattern) of every URL in the "console" namespace."""
    found: list[tuple[str, URLPattern]] = []

    def walk(patterns: list, namespace: str | None) -> None:
        for entry in patterns:
            if isinstance(entry, URLResolver):
                walk(entry.url_patterns, entry.namespace or namespace)
            elif namespace == "console" and entry.name:
                found.append((f"console:{entry.name}", entry))

    walk(get_resolver().url_patterns, None)
    return found


def test_every_per_tenant_console_page_is_guarded():
    routes = console_routes()
    assert len(routes) > len(UNGUARDED)
    unguarded = [
        name
        for name, pattern in routes
        if name not in UNGUARDED and not hasattr(pattern.callback, "console_roles")
    ]
    assert unguarded == []


def test_menu_offers_each_page_to_exactly_the_roles_its_guard_admits():
    routes = dict(console_routes())
    for item in NAV:
        assert item.url_name in routes, item.url_name
        assert routes[item.url_name].callback.console_roles == item.roles, item.key
        assert reverse(item.url_name, args=["some-tenant"]).startswith("/console/some-tenant/")
