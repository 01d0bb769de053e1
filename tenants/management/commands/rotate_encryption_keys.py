from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from audit.actors import Actor
from tenants.services import upstream_credential_reencrypt_all


class Command(BaseCommand):
    help = (
        "Re-encrypt stored upstream credentials with the first key of RTP_FIELD_ENCRYPTION_KEYS. "
        "Prepend the new key, run this, then drop the old key."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        count = upstream_credential_reencrypt_all(actor=Actor.system("manage.py rotate_encryption_keys"))
        self.stdout.write(f"re-encrypted {count} credential(s)")
