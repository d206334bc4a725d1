"""Loopback stand-ins for what a real server cannot do on demand (faults, rate limits, provider APIs)."""
