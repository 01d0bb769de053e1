from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    COMPLIANCE = "compliance", "Compliance"
    VIEWER = "viewer", "Viewer"


MANAGER_ROLES = frozenset({Role.OWNER, Role.ADMIN})


class Scope(models.TextChoices):
    SECRETS_CREATE = "secrets:create", "Issue client secrets"
    REALTIME_CONNECT = "realtime:connect", "Open relayed realtime sessions"
    MANAGE_READ = "manage:read", "Read secrets, sessions and usage"
    MANAGE_WRITE = "manage:write", "Revoke secrets, terminate sessions"


ALL_SCOPES: tuple[str, ...] = tuple(Scope.values)


class QuotaLimits(models.Model):
    """Limits per period. On a Plan, null means unlimited; on a QuotaOverride, null means "as the
    plan says". An override may only tighten a plan's limit (enforced by the service)."""

    secrets_per_day = models.PositiveIntegerField(null=True, blank=True)
    concurrent_sessions = models.PositiveIntegerField(null=True, blank=True)
    audio_minutes_per_month = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_month = models.PositiveBigIntegerField(null=True, blank=True)
    cost_usd_per_month = models.DecimalField(
        max_digits=12, decimal_places=2, null=True, blank=True, validators=[MinValueValidator(Decimal("0"))]
    )
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    max_session_seconds = models.PositiveIntegerField(null=True, blank=True)

    LIMIT_FIELDS = (
        "secrets_per_day",
        "concurrent_sessions",
        "audio_minutes_per_month",
        "tokens_per_month",
        "cost_usd_per_month",
        "requests_per_minute",
        "max_session_seconds",
    )

    class Meta:
        abstract = True


class Plan(QuotaLimits):
    slug = models.SlugField(max_length=50, unique=True)
    name = models.CharField(max_length=100)
    secret_ttl_max_seconds = models.PositiveIntegerField(
        default=600, help_text="Longest client-secret TTL any tenant on this plan may configure."
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    def __str__(self) -> str:
        return self.name


class Tenant(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"

    class UpstreamMode(models.TextChoices):
        PLATFORM = "platform", "Platform's OpenAI key"
        OWN = "own", "Tenant's own OpenAI key"

    slug = models.SlugField(max_length=50, unique=True)
    name = models.CharField(max_length=200)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="tenants")
    upstream_mode = models.CharField(
        max_length=16, choices=UpstreamMode.choices, default=UpstreamMode.PLATFORM
    )
    time_zone = models.CharField(
        max_length=64, default="UTC", help_text="IANA zone for showing usage by local day."
    )
    audit_retention_days = models.PositiveIntegerField(default=365 * 7)
    usage_retention_days = models.PositiveIntegerField(default=400)
    # Quota threshold alerts (percentages of each limit), delivered by webhook and/or email.
    alert_thresholds = models.JSONField(default=list, blank=True)
    alert_webhook_url = models.URLField(blank=True, default="")
    alert_webhook_secret_encrypted = models.TextField(blank=True, default="", editable=False)
    alert_emails = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    suspended_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return self.slug

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE


class QuotaOverride(QuotaLimits):
    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="quota_override")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"limits of {self.tenant_id}"


class SessionPolicy(models.Model):
    """What a tenant's client apps may ask for, and what the platform enforces on their behalf."""

    class SecretKind(models.TextChoices):
        RELAY = "relay", "Relay token (sessions go through this platform, metered exactly)"
        UPSTREAM = "upstream", "OpenAI ephemeral key (client connects to OpenAI directly)"

    class TtlMode(models.TextChoices):
        CLAMP = "clamp", "Clamp requested TTLs into the bounds"
        REJECT = "reject", "Reject requests outside the bounds"

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="session_policy")
    secret_kind = models.CharField(max_length=16, choices=SecretKind.choices, default=SecretKind.RELAY)
    allowed_models = models.JSONField(default=list, blank=True, help_text="Empty: any model.")
    allowed_voices = models.JSONField(default=list, blank=True, help_text="Empty: any voice.")
    ttl_default_seconds = models.PositiveIntegerField(default=60)
    ttl_min_seconds = models.PositiveIntegerField(default=10)
    ttl_max_seconds = models.PositiveIntegerField(default=600)
    ttl_mode = models.CharField(max_length=8, choices=TtlMode.choices, default=TtlMode.CLAMP)
    instructions_prefix = models.TextField(blank=True, default="")
    tool_allowlist = models.JSONField(null=True, blank=True, help_text="Null: any tool; a list: only these.")
    max_output_tokens_ceiling = models.PositiveIntegerField(null=True, blank=True)
    locked_fields = models.JSONField(
        default=list, blank=True, help_text="Dotted session fields clients may not set or change."
    )
    relay_single_use = models.BooleanField(default=True)
    max_session_seconds = models.PositiveIntegerField(default=1800)
    session_cost_ceiling_usd = models.DecimalField(max_digits=10, decimal_places=4, null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"policy of {self.tenant_id}"


class Membership(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "tenant"], name="membership_user_tenant_unique")
        ]

    def __str__(self) -> str:
        return f"{self.user_id}@{self.tenant_id}:{self.role}"


class ApiKey(models.Model):
    """A tenant's API key. Holds a lookup prefix, the last four characters and an HMAC
    fingerprint; the plaintext exists only in the response that created it."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=20, unique=True)
    last_four = models.CharField(max_length=4)
    fingerprint = models.CharField(max_length=64)
    scopes = models.JSONField(default=list)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    rotated_from = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="rotated_to"
    )
    # Optional sub-limits, tighter than the tenant's (null: only the tenant's limit applies).
    secrets_per_day = models.PositiveIntegerField(null=True, blank=True)
    concurrent_sessions = models.PositiveIntegerField(null=True, blank=True)
    cost_usd_per_month = models.DecimalField(max_digits=12, decimal_places=2, null=True, blank=True)
    # Per-key override of the tenant policy's secret kind (null: as the policy says).
    secret_kind = models.CharField(
        max_length=16, choices=SessionPolicy.SecretKind.choices, blank=True, default=""
    )

    class Meta:
        indexes = [models.Index(fields=["tenant", "created_at"], name="apikey_tenant_created")]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.name})"

    def status_at(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    @property
    def status(self) -> str:
        return self.status_at(timezone.now())


class UpstreamCredential(models.Model):
    """A tenant's own OpenAI API key, Fernet-encrypted; never shown again after it is saved."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="upstream_credential")
    ciphertext = models.TextField(editable=False)
    last_four = models.CharField(max_length=4, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    def __str__(self) -> str:
        return f"OpenAI key …{self.last_four} of {self.tenant_id}"
