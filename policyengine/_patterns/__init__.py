"""Each pattern's runtime: breaker, retry, bulkhead, fallback, rate limit, throttle, hedge,
adaptive limits."""
