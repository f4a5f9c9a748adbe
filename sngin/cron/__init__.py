"""Scheduled runs: tenants' `cron` entries fired at their ticks (scheduler) and each run
claimed, run like a request and recorded (runs)."""
