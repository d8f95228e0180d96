"""Analytics: tracks, zones and line crossings (``streams[].analytics``; docs/analytics.md)."""
