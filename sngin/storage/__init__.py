"""Tenant storage: SQLite by default, Redis when scaled out, behind one TenantStorage; the
scripts' `cache`; the backend's health watch; opening the backend chosen at start-up."""
