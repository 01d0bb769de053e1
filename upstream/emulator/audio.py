"""Audio arithmetic and signals for the emulator: formats, G.711, energy, a deterministic voice.

Formats (the Realtime API's `audio.*.format`):
- `audio/pcm`: 16-bit signed little-endian mono at 24 kHz, 48 bytes per millisecond;
- `audio/pcmu` / `audio/pcma`: G.711 μ-law / A-law, one byte per sample at 8 kHz, 8 bytes per ms.

G.711 is implemented here (ITU-T G.711 segment tables) because `audioop` is deprecated and gone
from Python 3.13. The "voice" is a tone whose pitch depends on the voice name, with short fades,
so responses carry real, playable audio that tests can check sample by sample.
"""

from __future__ import annotations

import math
import operator
import sys
from array import array
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class AudioFormat:
    type: str
    sample_rate: int
    bytes_per_sample: int

    @property
    def bytes_per_ms(self) -> float:
        return self.sample_rate * self.bytes_per_sample / 1000

    def duration_ms(self, n_bytes: int) -> float:
        return n_bytes / self.bytes_per_ms

    def bytes_for_ms(self, ms: float) -> int:
        n = int(ms * self.bytes_per_ms)
        return n - n % self.bytes_per_sample


PCM = AudioFormat("audio/pcm", 24000, 2)
PCMU = AudioFormat("audio/pcmu", 8000, 1)
PCMA = AudioFormat("audio/pcma", 8000, 1)
FORMATS = {f.type: f for f in (PCM, PCMU, PCMA)}


def audio_format(fmt: dict[str, object] | None) -> AudioFormat:
    return FORMATS[str((fmt or {}).get("type", "audio/pcm"))]


# --- G.711 ------------------------------------------------------------------------------------


def _ulaw_to_linear(byte: int) -> int:
    byte = ~byte & 0xFF
    sign = byte & 0x80
    exponent = (byte >> 4) & 0x07
    mantissa = byte & 0x0F
    sample = ((mantissa << 3) + 0x84) << exponent
    sample -= 0x84
    return -sample if sign else sample


def _alaw_to_linear(byte: int) -> int:
    byte ^= 0x55
    sign = byte & 0x80
    exponent = (byte >> 4) & 0x07
    mantissa = byte & 0x0F
    sample = (mantissa << 4) + 8 if exponent == 0 else ((mantissa << 4) + 0x108) << (exponent - 1)
    return sample if sign else -sample


def _linear_to_ulaw(sample: int) -> int:
    bias, clip = 0x84, 32635
    sign = 0x80 if sample < 0 else 0
    magnitude = min(clip, -sample if sample < 0 else sample) + bias
    exponent = 7
    mask = 0x4000
    while exponent > 0 and not magnitude & mask:
        exponent -= 1
        mask >>= 1
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def _linear_to_alaw(sample: int) -> int:
    sign = 0x80 if sample >= 0 else 0
    magnitude = min(32767, sample if sample >= 0 else -sample - 1)
    if magnitude < 256:
        exponent, mantissa = 0, magnitude >> 4
    else:
        exponent = magnitude.bit_length() - 8
        mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return (sign | (exponent << 4) | mantissa) ^ 0x55


ULAW_DECODE = array("h", [_ulaw_to_linear(b) for b in range(256)])
ALAW_DECODE = array("h", [_alaw_to_linear(b) for b in range(256)])


def to_linear(data: bytes, fmt: AudioFormat) -> array[int]:
    """Decode audio to 16-bit linear samples (at the format's own rate)."""
    if fmt is PCM:
        samples = array("h")
        samples.frombytes(data[: len(data) - len(data) % 2])
        if sys.byteorder != "little":
            samples.byteswap()
        return samples
    table = ULAW_DECODE if fmt is PCMU else ALAW_DECODE
    return array("h", [table[b] for b in data])


def from_linear(samples: array[int], fmt: AudioFormat) -> bytes:
    if fmt is PCM:
        out = array("h", samples)
        if sys.byteorder != "little":
            out.byteswap()
        return out.tobytes()
    encode = _linear_to_ulaw if fmt is PCMU else _linear_to_alaw
    return bytes(encode(s) for s in samples)


def rms(samples: array[int], *, stride: int = 1) -> float:
    """Root-mean-square level, full scale = 1.0, over every `stride`-th sample (an energy estimate
    for VAD needs no more than a few thousand samples a second)."""
    view = samples[::stride] if stride > 1 else samples
    if not view:
        return 0.0
    total = sum(map(operator.mul, view, view))
    return math.sqrt(total / len(view)) / 32768.0


# --- the emulator's voice ---------------------------------------------------------------------

VOICE_PITCH_HZ = {
    "alloy": 220,
    "ash": 180,
    "ballad": 200,
    "coral": 260,
    "echo": 170,
    "sage": 240,
    "shimmer": 280,
    "verse": 190,
    "marin": 230,
    "cedar": 160,
}
TONE_AMPLITUDE = 0.3  # of full scale: clearly speech to any VAD, far from clipping
FADE_MS = 10


CHUNK_MS = 100  # every pitch above is a multiple of 10 Hz, so a 100 ms chunk holds whole cycles


def _tone_samples(frequency: int, rate: int, n: int, *, fade_in: bool, fade_out: bool) -> array[int]:
    fade = max(1, rate * FADE_MS // 1000)
    step = 2 * math.pi * frequency / rate
    samples = array("h", bytes(2 * n))
    for i in range(n):
        envelope = 1.0
        if fade_in:
            envelope = min(envelope, i / fade)
        if fade_out:
            envelope = min(envelope, (n - 1 - i) / fade)
        samples[i] = int(32767 * TONE_AMPLITUDE * envelope * math.sin(step * i))
    return samples


@lru_cache(maxsize=256)
def _tone_piece(voice: str, fmt: AudioFormat, ms: int, fade_in: bool, fade_out: bool) -> bytes:
    n = fmt.sample_rate * ms // 1000
    samples = _tone_samples(
        VOICE_PITCH_HZ.get(voice, 220), fmt.sample_rate, n, fade_in=fade_in, fade_out=fade_out
    )
    return from_linear(samples, fmt)


def tone_chunks(voice: str, fmt: AudioFormat, duration_ms: int) -> list[bytes]:
    """`duration_ms` of the voice's tone in `fmt`, as 100 ms chunks (the last may be shorter), with
    10 ms fades at both ends. Deterministic; joined, the chunks are one continuous sine."""
    duration_ms = max(0, int(duration_ms))
    if duration_ms <= CHUNK_MS:
        return [_tone_piece(voice, fmt, duration_ms, True, True)] if duration_ms else []
    full, rest = divmod(duration_ms, CHUNK_MS)
    if rest == 0:
        full, rest = full - 1, CHUNK_MS
    chunks = [_tone_piece(voice, fmt, CHUNK_MS, True, False)]
    chunks += [_tone_piece(voice, fmt, CHUNK_MS, False, False)] * (full - 1)
    chunks.append(_tone_piece(voice, fmt, rest, False, True))
    return chunks


def tone(voice: str, fmt: AudioFormat, duration_ms: int) -> bytes:
    return b"".join(tone_chunks(voice, fmt, duration_ms))
