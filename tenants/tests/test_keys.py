from __future__ import annotations

import re

from tenants import keys


def test_generated_key_has_scannable_format_and_valid_checksum():
    generated = keys.generate(keys.KeyType.API_KEY)
    assert re.fullmatch(r"rtp_sk_[0-9A-Za-z]{32}_[0-9A-Za-z]{6}", generated.plaintext)
    parsed = keys.parse(generated.plaintext)
    assert parsed is not None
    assert parsed.key_type is keys.KeyType.API_KEY
    assert parsed.prefix == generated.prefix == generated.plaintext[:15]
    assert generated.last_four == generated.plaintext[-4:]


def test_relay_tokens_have_their_own_type():
    generated = keys.generate(keys.KeyType.RELAY_TOKEN)
    assert generated.plaintext.startswith("rtp_rt_")
    assert keys.parse(generated.plaintext).key_type is keys.KeyType.RELAY_TOKEN


def test_single_character_typo_fails_the_checksum():
    plaintext = keys.generate(keys.KeyType.API_KEY).plaintext
    position = 10
    swapped = "A" if plaintext[position] != "A" else "B"
    typo = plaintext[:position] + swapped + plaintext[position + 1 :]
    assert keys.parse(typo) is None


def test_garbage_and_foreign_keys_are_rejected():
    for raw in [
        "",
        "rtp_sk_short_abcdef",
        "sk-proj-" + "a" * 40,
        "rtp_xx_" + "a" * 32 + "_abcdef",
        "Bearer x",
    ]:
        assert keys.parse(raw) is None


def test_keys_are_unique_and_fingerprints_are_keyed_hashes():
    first, second = keys.generate(keys.KeyType.API_KEY), keys.generate(keys.KeyType.API_KEY)
    assert first.plaintext != second.plaintext
    assert first.fingerprint == keys.fingerprint(first.plaintext)
    assert len(first.fingerprint) == 64
    assert first.plaintext not in first.fingerprint
