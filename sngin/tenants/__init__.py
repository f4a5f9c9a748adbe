"""What belongs to a tenant: its `_sngin.json`, egress rule, share of outbound connections,
tokens, rate limits (admission, shared across processes on Redis) and quarantine."""
