from __future__ import annotations

import os
import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from audit.actors import Actor
from tenants.models import ApiKey, Membership, Role
from tenants.selectors import tenant_get
from tenants.services import api_key_create, membership_add, plan_get_or_create_default, tenant_create

DEMO_SLUG = "demo"
DEMO_KEY_NAME = "demo key"


class Command(BaseCommand):
    help = (
        "Create the demo tenant, a console superuser and one API key; safe to run again (it creates "
        "only what is missing). The superuser's password comes from DEMO_ADMIN_PASSWORD or is generated "
        "and printed once."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default=os.environ.get("DEMO_ADMIN_USERNAME", "admin"))
        parser.add_argument("--base-url", default="")

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        actor = Actor.system("manage.py seed_demo")
        base = (
            options["base_url"]
            or f"http://{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
        )
        plan_get_or_create_default()
        tenant = tenant_get(slug=DEMO_SLUG) or tenant_create(slug=DEMO_SLUG, name="Demo tenant", actor=actor)

        user_model = get_user_model()
        username = options["username"]
        env_password = os.environ.get("DEMO_ADMIN_PASSWORD", "")
        user = user_model.objects.filter(username=username).first()
        password_note = "unchanged (set DEMO_ADMIN_PASSWORD to reset it)"
        if user is None:
            password = env_password or secrets.token_urlsafe(12)
            user = user_model.objects.create_superuser(username=username, email="", password=password)
            password_note = password if not env_password else "from DEMO_ADMIN_PASSWORD"
        elif env_password and not user.check_password(env_password):
            user.set_password(env_password)
            user.save(update_fields=["password"])
            password_note = "reset from DEMO_ADMIN_PASSWORD"
        if not Membership.objects.filter(user=user, tenant=tenant).exists():
            membership_add(tenant=tenant, user=user, role=Role.OWNER, actor=actor)

        existing_key = ApiKey.objects.filter(
            tenant=tenant, name=DEMO_KEY_NAME, revoked_at__isnull=True
        ).first()
        if existing_key is None:
            issued = api_key_create(tenant=tenant, name=DEMO_KEY_NAME, actor=actor)
            key_line = f"{issued.plaintext}   (shown once; store it now)"
        else:
            key_line = (
                f"{existing_key.prefix}… exists (not shown again; make a new one with "
                f"`python manage.py create_api_key {DEMO_SLUG} --name mykey`)"
            )

        self.stdout.write(
            "\n".join(
                [
                    "",
                    "Realtime Platform demo",
                    f"  console:  {base}/console/   user {username}, password {password_note}",
                    f"  admin:    {base}/admin/",
                    f"  API docs: {base}/api/docs/",
                    f"  tenant:   {tenant.slug}",
                    f"  API key:  {key_line}",
                    "",
                ]
            )
        )
