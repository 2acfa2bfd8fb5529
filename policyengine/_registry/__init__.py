"""The registry of guards: compile, swap, handles, the default engine, reload, fork."""
