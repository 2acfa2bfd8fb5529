"""The guarded call: the guard, the attempt lifecycle, its drivers, timeouts, the clock."""
