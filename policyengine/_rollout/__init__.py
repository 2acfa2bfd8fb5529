"""Safe policy changes: recording, replay, suggestions, enforcement ramps, chaos drills."""
