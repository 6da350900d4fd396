"""Batch jobs: up to 1000 inputs split into chunks on the `batch` queue, progress counted in PostgreSQL,
results in object storage."""
