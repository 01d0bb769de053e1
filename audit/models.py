from __future__ import annotations

from django.db import models

from audit.fields import CanonicalJSONField


class AuditChainHead(models.Model):
    """The newest (seq, hash, time) of one chain. Appends lock this row, so each chain grows one
    row at a time with no forks however many writers there are; `created_at` keeps each chain's
    timestamps non-decreasing, which lets a time range be read as a range of seq."""

    chain = models.CharField(max_length=64, unique=True)
    tenant = models.ForeignKey(
        "tenants.Tenant", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    seq = models.PositiveBigIntegerField(default=0)
    hash = models.CharField(max_length=64, default="")
    created_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.chain}@{self.seq}"


class AuditEvent(models.Model):
    """One fact of the audit trail: append-only, hash-chained per tenant (chain `tenant:<id>`;
    platform-level facts use chain `platform`). Written only by `audit.services.audit_record`;
    the database refuses UPDATE, DELETE and TRUNCATE outside the retention purge.

    Every index leads with `chain` and ends with `seq`, so each viewer filter reads newest-first
    pages straight off one index (keyset pagination on seq), whatever the table's size."""

    chain = models.CharField(max_length=64)
    seq = models.PositiveBigIntegerField()
    tenant = models.ForeignKey(
        "tenants.Tenant", null=True, blank=True, on_delete=models.PROTECT, related_name="audit_events"
    )
    created_at = models.DateTimeField()
    actor_type = models.CharField(max_length=16)
    actor_id = models.CharField(max_length=64, blank=True, default="")
    actor_label = models.CharField(max_length=200, blank=True, default="")
    action = models.CharField(max_length=64)
    target_type = models.CharField(max_length=64, blank=True, default="")
    target_id = models.CharField(max_length=64, blank=True, default="")
    request_id = models.CharField(max_length=128, blank=True, default="")
    ip = models.GenericIPAddressField(null=True, blank=True)
    details = CanonicalJSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["chain", "seq"], name="auditevent_chain_seq_unique")]
        indexes = [
            models.Index(fields=["chain", "created_at", "seq"], name="audit_chain_time"),
            models.Index(fields=["chain", "action", "seq"], name="audit_chain_action"),
            models.Index(fields=["chain", "actor_label", "seq"], name="audit_chain_actor"),
            models.Index(fields=["chain", "target_type", "target_id", "seq"], name="audit_chain_target"),
            models.Index(fields=["chain", "request_id", "seq"], name="audit_chain_request"),
        ]

    def __str__(self) -> str:
        return f"{self.chain}#{self.seq} {self.action}"


class AuditCheckpoint(models.Model):
    """A signed statement "chain C had reached seq S with hash H at time T" (HMAC-SHA256 under
    settings.AUDIT_SIGNING_KEY, a key the database does not hold). Checkpoints chain to each
    other through `prev_signature`, like CloudTrail's digest files: rewriting a whole chain, or
    dropping rows and fixing the head, no longer matches what was signed. A `purge` checkpoint
    marks the retention boundary, so a chain whose oldest rows were purged stays verifiable."""

    class Kind(models.TextChoices):
        PERIODIC = "periodic", "Periodic"
        PURGE = "purge", "Retention purge boundary"

    chain = models.CharField(max_length=64)
    tenant = models.ForeignKey(
        "tenants.Tenant", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    seq = models.PositiveBigIntegerField()
    hash = models.CharField(max_length=64)
    created_at = models.DateTimeField()
    kind = models.CharField(max_length=16, choices=Kind.choices)
    key_id = models.CharField(max_length=16)
    prev_signature = models.CharField(max_length=64, blank=True, default="")
    signature = models.CharField(max_length=64)

    class Meta:
        indexes = [models.Index(fields=["chain", "seq"], name="audit_checkpoint_chain_seq")]

    def __str__(self) -> str:
        return f"{self.chain}@{self.seq} ({self.kind})"
