"""Audio arithmetic and codecs the emulator relies on."""

from __future__ import annotations

import itertools
import math
from array import array

import pytest

from upstream.emulator import audio


@pytest.mark.parametrize(
    ("fmt", "bytes_per_second"),
    [(audio.PCM, 48_000), (audio.PCMU, 8_000), (audio.PCMA, 8_000)],
)
def test_bytes_to_duration(fmt, bytes_per_second):
    assert fmt.duration_ms(bytes_per_second) == 1000
    assert fmt.bytes_for_ms(20) == bytes_per_second // 50
    assert fmt.bytes_for_ms(10.01) % fmt.bytes_per_sample == 0  # never splits a sample


def test_pcm_is_little_endian_16_bit():
    assert audio.from_linear(array("h", [1, -2]), audio.PCM) == b"\x01\x00\xfe\xff"
    assert list(audio.to_linear(b"\x01\x00\xfe\xff", audio.PCM)) == [1, -2]


@pytest.mark.parametrize("fmt", [audio.PCMU, audio.PCMA])
def test_g711_round_trips_within_its_quantisation_error(fmt):
    samples = array("h", range(-32000, 32000, 97))
    decoded = audio.to_linear(audio.from_linear(samples, fmt), fmt)
    for original, back in zip(samples, decoded, strict=True):
        # G.711 keeps 4 mantissa bits per segment: the error is below 1/16 of the magnitude (+ step)
        assert abs(original - back) <= abs(original) / 16 + 16


def test_g711_known_code_points():
    # ITU-T G.711: silence is 0xFF in mu-law and 0xD5 in A-law
    assert audio.from_linear(array("h", [0]), audio.PCMU) == b"\xff"
    assert audio.from_linear(array("h", [0]), audio.PCMA) == b"\xd5"
    assert audio.ULAW_DECODE[0x00] == -32124
    assert audio.ALAW_DECODE[0x55] == -8


def test_rms_is_relative_to_full_scale():
    assert audio.rms(array("h")) == 0.0
    assert audio.rms(array("h", [0] * 100)) == 0.0
    square = array("h", [16384, -16384] * 50)
    assert audio.rms(square) == pytest.approx(0.5)


@pytest.mark.parametrize("fmt", [audio.PCM, audio.PCMU, audio.PCMA])
@pytest.mark.parametrize("duration_ms", [40, 100, 250, 1000])
def test_tone_chunks_are_one_continuous_sine_of_the_right_length(fmt, duration_ms):
    chunks = audio.tone_chunks("alloy", fmt, duration_ms)
    joined = b"".join(chunks)
    assert fmt.duration_ms(len(joined)) == duration_ms
    assert all(fmt.duration_ms(len(c)) <= 100 for c in chunks)
    samples = audio.to_linear(joined, fmt)
    assert abs(samples[0]) <= 8  # faded in (A-law has no exact zero: its smallest step is 8)
    assert abs(samples[-1]) < 2000  # faded out
    # 220 Hz: about 2 * 220 zero crossings per second, whatever the chunking
    crossings = sum(1 for a, b in itertools.pairwise(samples) if (a < 0) != (b < 0))
    assert crossings == pytest.approx(2 * 220 * duration_ms / 1000, abs=3)
    if duration_ms >= 250:  # beyond the 10 ms fades, a sine at 30% of full scale
        assert audio.rms(samples) == pytest.approx(0.3 / math.sqrt(2), rel=0.1)


def test_voices_differ_and_are_deterministic():
    assert audio.tone("alloy", audio.PCM, 200) == audio.tone("alloy", audio.PCM, 200)
    assert audio.tone("alloy", audio.PCM, 200) != audio.tone("cedar", audio.PCM, 200)
