"""Load shapes for any scenario: a ramp and a spike. Add this file after the scenario:

    locust -f loadtests/sync.py,loadtests/shapes.py --host http://127.0.0.1:18080 --headless -u 40 -t 60s
    DLKIT_SHAPE=spike locust -f loadtests/polling.py,loadtests/shapes.py --headless -u 40 -t 60s ...
    locust -f loadtests/sync.py,loadtests/shapes.py --class-picker   # pick one in the web UI

Both take the peak from -u, the spawn rate from -r and the whole duration from -t (default
60 s), and stop by themselves at the end. Headless, with both defined, Locust takes the first
(Ramp); DLKIT_SHAPE=ramp|spike keeps only the one named.
"""

from __future__ import annotations

import math
import os

from locust import LoadTestShape

DEFAULT_DURATION_S = 60


class _Shape(LoadTestShape):
    abstract = True
    use_common_options = True  # -u, -r and -t reach the shape

    def options(self) -> tuple[int, float, float]:
        options = self.runner.environment.parsed_options
        peak = max(1, int(getattr(options, "num_users", None) or 10))
        rate = float(getattr(options, "spawn_rate", None) or peak)
        duration = float(getattr(options, "run_time", None) or DEFAULT_DURATION_S)
        return peak, rate, duration


class Ramp(_Shape):
    """Four equal steps up to the peak over the first 80 % of the run, then hold it."""

    abstract = os.environ.get("DLKIT_SHAPE", "ramp") != "ramp"
    steps = 4

    def tick(self):
        peak, rate, duration = self.options()
        elapsed = self.get_run_time()
        if elapsed >= duration:
            return None
        step = min(self.steps, 1 + math.floor(elapsed / (0.8 * duration / self.steps)))
        return max(1, round(peak * step / self.steps)), rate


class Spike(_Shape):
    """A quarter of the peak, the full peak for the middle 20 % of the run, then a quarter again:
    what a marketing email or a retry storm does to a service."""

    abstract = os.environ.get("DLKIT_SHAPE", "spike") != "spike"

    def tick(self):
        peak, rate, duration = self.options()
        elapsed = self.get_run_time()
        if elapsed >= duration:
            return None
        spiking = 0.4 * duration <= elapsed < 0.6 * duration
        # Spawn the spike as fast as it is asked: a spike that ramps up is a ramp.
        return (peak, max(rate, peak)) if spiking else (max(1, peak // 4), rate)
