"""Replay bundles: what a failing (or recorded) run saw, kept per tenant, and run again."""
