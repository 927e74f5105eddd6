"""Settings parse the original service's environment names; pure logic."""

import pytest
from pydantic import ValidationError

from dlkit.settings import Settings


def test_defaults_match_the_original_service():
    s = Settings.from_env({})
    assert (s.DOWNLOAD_DELAY_MIN_MS, s.DOWNLOAD_DELAY_MAX_MS) == (10_000, 120_000)
    assert s.DOWNLOAD_DELAY_ENABLED is True
    assert s.TIME_SCALE == 1.0


def test_booleans_parse_false_as_false():
    assert (
        Settings.from_env({"DOWNLOAD_DELAY_ENABLED": "false", "S3_FORCE_PATH_STYLE": "false"}).DOWNLOAD_DELAY_ENABLED
        is False
    )
    assert Settings.from_env({"S3_FORCE_PATH_STYLE": "true"}).S3_FORCE_PATH_STYLE is True


def test_time_scale_scales_every_duration():
    s = Settings.from_env({"TIME_SCALE": "0.02", "REQUEST_TIMEOUT_MS": "30000"})
    assert s.request_timeout_s == pytest.approx(0.6)
    assert s.poll_interval_s == pytest.approx(0.1)
    assert s.heartbeat_s == pytest.approx(0.1)
    assert s.download_url_ttl_s == 6


def test_api_keys_map_keys_to_users():
    assert Settings.from_env({"API_KEYS": "k1:alice, k2:bob"}).api_keys == {"k1": "alice", "k2": "bob"}
    assert Settings.from_env({}).api_keys == {}
    with pytest.raises(ValueError):
        _ = Settings.from_env({"API_KEYS": "no-user"}).api_keys


def test_inconsistent_delay_range_is_refused():
    with pytest.raises(ValidationError):
        Settings.from_env({"DOWNLOAD_DELAY_MIN_MS": "5000", "DOWNLOAD_DELAY_MAX_MS": "1000"})
