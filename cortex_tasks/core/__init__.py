"""The light core that the gateway and the workers share: settings, queues and task names, the catalogue
as data, jobs, storage, auth and audit, the cache, limits, request and message contracts, errors.

Nothing here imports torch, transformers, spaCy or any other machine-learning library, nor
`cortex_tasks.runtime` (`.importlinter` holds these rules and the test suite checks them).
"""
