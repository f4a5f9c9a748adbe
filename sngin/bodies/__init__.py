"""Bodies in memory: the server-wide memory budgets, reading and inflating bodies within a cap,
and receiving request bodies."""
