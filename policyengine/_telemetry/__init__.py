"""What guards tell: events and listeners, counters, the typed snapshot."""
