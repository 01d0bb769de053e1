from __future__ import annotations

import json
import logging

from realtime_platform.context import request_id_var, tenant_id_var
from realtime_platform.logging import RedactingJsonFormatter, RedactingTextFormatter, RequestIdFilter
from realtime_platform.redaction import REDACTED, redact
from tenants import keys

SECRETS = {
    "api key": keys.generate(keys.KeyType.API_KEY).plaintext,
    "relay token": keys.generate(keys.KeyType.RELAY_TOKEN).plaintext,
    "ephemeral": "ek_68af1c2b9f7e4a52b3c1d0e9f8a7b6c5",
    "openai key": "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz012345",
}


def make_record(message, *args, exc_info=None):
    record = logging.LogRecord("tests", logging.WARNING, __file__, 1, message, args, exc_info)
    RequestIdFilter().filter(record)
    return record


def test_text_and_json_logs_mask_every_kind_of_secret():
    request_id_var.set("req_test")
    tenant_id_var.set("42")
    for formatter in (RedactingTextFormatter("%(message)s [%(request_id)s]"), RedactingJsonFormatter()):
        for secret in SECRETS.values():
            line = formatter.format(
                make_record("key=%s header=%s", secret, {"Authorization": f"Bearer {secret}"})
            )
            assert secret not in line
            assert REDACTED in line
            assert "req_test" in line


def test_json_log_lines_are_json_with_request_and_tenant_ids():
    request_id_var.set("req_json")
    tenant_id_var.set("7")
    line = RedactingJsonFormatter().format(make_record("tenant=%s did a thing", 7))
    parsed = json.loads(line)
    assert parsed["message"] == "tenant=7 did a thing"
    assert parsed["request_id"] == "req_json"
    assert parsed["tenant_id"] == "7"
    assert parsed["level"] == "WARNING"


def test_tracebacks_are_masked_too():
    secret = SECRETS["api key"]
    try:
        raise ValueError(f"failed for {secret}")
    except ValueError:
        import sys

        record = make_record("crashed", exc_info=sys.exc_info())
    line = RedactingTextFormatter("%(message)s").format(record)
    assert "Traceback" in line
    assert secret not in line


def test_structured_redaction_masks_sensitive_keys_and_secret_values():
    data = {
        "authorization": "anything at all",
        "nested": [{"note": f"used {SECRETS['ephemeral']}"}, {"password": "hunter22"}],
        "prefix": "rtp_sk_AbCd1234",  # a lookup prefix is not a secret
        "count": 3,
    }
    masked = redact(data)
    assert masked["authorization"] == REDACTED
    assert SECRETS["ephemeral"] not in json.dumps(masked)
    assert masked["nested"][1]["password"] == REDACTED
    assert masked["prefix"] == "rtp_sk_AbCd1234"
    assert masked["count"] == 3
