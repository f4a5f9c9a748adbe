"""The admin API and web UI (Quart-trio): one guard in front of every route, code, storage,
tokens, events, stats, previews, live tails and the cross-process coordination of stats."""
