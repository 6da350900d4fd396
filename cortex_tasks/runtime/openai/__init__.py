"""OpenAI as a model backend: configuration, shared rate limits, retries, cost accounting and a cache
for deterministic calls. Everything here but `client` and `backends` is importable by the gateway
(no `openai` package import at module level)."""
