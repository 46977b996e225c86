"""Per-key rate and concurrency counts, the API-key cache, and the replicas' reports of their
admission counts: interfaces in base.py, kept in this process (process.py) or shared by every
replica through Redis (redis.py, imported only when `[limits] redis_url` is set)."""
