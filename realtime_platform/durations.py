"""Parse human durations for command-line flags: `90s`, `15m`, `12h`, `30d`, or plain seconds."""

from __future__ import annotations

import re
from datetime import timedelta

_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    match = _DURATION.match(text.lower())
    if match is None:
        raise ValueError(f"invalid duration {text!r}: use e.g. 90s, 15m, 12h or 30d")
    amount, unit = match.groups()
    return timedelta(seconds=int(amount) * _UNITS[unit])
