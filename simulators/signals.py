"""Signal models: plausible values per device type, and a drifting gas leak."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from devices.model import Device


@dataclass(slots=True)
class DeviceSignal:
    """Produces the next reading of one device at a given time."""

    device: Device
    rng: random.Random
    drift_start_s: float | None = None
    drift_rate_per_s: float = 0.0
    drift_max: float = 75.0

    def values(self, t_s: float) -> dict[str, float]:
        """Metric values at ``t_s`` seconds since the start of the run."""
        if self.device.type == "gas_alarm":
            lel = max(0.0, abs(self.rng.gauss(0.5, 0.4)))
            if self.drift_start_s is not None and t_s >= self.drift_start_s:
                lel += min(self.drift_max, (t_s - self.drift_start_s) * self.drift_rate_per_s)
            return {"lel": round(lel, 2), "battery": round(3.6 - self.rng.random() * 0.05, 3),
                    "rssi": float(self.rng.randint(-95, -60))}
        # A logger with 0.1 kPa noise: the demo reports every device several times a second,
        # and the rate rule compares consecutive readings (see the rules issue).
        pressure = 0.32 + 0.03 * math.sin(t_s / 600.0) + self.rng.gauss(0.0, 0.0001)
        return {"pressure": round(pressure, 4), "battery": round(3.6 - self.rng.random() * 0.05, 3),
                "rssi": float(self.rng.randint(-100, -65))}
