"""What the tests share: servers they start (Redis, Cluster, Sentinel, Prometheus, ASGI apps),
workers run in spawned processes, reference models, scripted scenarios and timing helpers."""
