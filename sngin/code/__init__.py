"""Tenants' code: the stores (local folder, S3, GitHub modules), the code cache in front of them
(LRU, single flight, purge log, disk mirror), and the code files the API writes within the
tenant's quota."""
