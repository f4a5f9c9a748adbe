"""The CLI's other side: commands that talk to a running server (deploy, logs, storage), their
output, and one-shot script runs."""
