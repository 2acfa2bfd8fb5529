"""The test suite (a package, so its helpers import by name: `tests.helpers.redis_server`)."""
