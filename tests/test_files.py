"""The simulated catalogue: pure logic, no servers."""

import random

from dlkit import files
from dlkit.settings import Settings


def test_availability_follows_the_original_rule():
    assert files.is_available(70000)
    assert not files.is_available(70001)


def test_bytes_are_deterministic_and_sized():
    for file_id in (10003, 70000, 99999991):
        data = files.file_bytes(file_id)
        assert len(data) == files.file_size(file_id)
        assert files.MIN_FILE_SIZE <= len(data) <= files.MAX_FILE_SIZE
        assert data == files.file_bytes(file_id)
    assert files.file_bytes(70000) != files.file_bytes(70007)


def test_delay_is_drawn_from_the_configured_range_on_the_scaled_clock():
    settings = Settings(TIME_SCALE=0.5, DOWNLOAD_DELAY_MIN_MS=10_000, DOWNLOAD_DELAY_MAX_MS=120_000)
    rng = random.Random(1)
    draws = [files.draw_delay_s(settings, rng) for _ in range(2000)]
    assert 5.0 <= min(draws) and max(draws) <= 60.0
    assert min(draws) < 6 and max(draws) > 59  # the whole range is used


def test_delay_disabled_is_zero():
    assert files.draw_delay_s(Settings(DOWNLOAD_DELAY_ENABLED=False)) == 0.0
