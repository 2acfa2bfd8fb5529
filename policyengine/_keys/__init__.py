"""Keyed guards: a breaker (and bulkhead) per key, bounded, with an ejection cap."""
