"""Relay-host detection: hosts that re-originate their clients' model-API traffic (issue 5)."""

from appliance.detect.relay.detector import RelayDetector, detect_relays
from appliance.detect.relay.state import RelayLimits

__all__ = ["RelayDetector", "RelayLimits", "detect_relays"]
