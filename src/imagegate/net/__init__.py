"""Network access on a client's behalf: fetches that cannot be turned against the operator's
own network (safe_fetch.py)."""
