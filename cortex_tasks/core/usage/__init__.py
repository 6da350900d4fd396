"""The usage ledger (GET /api/v1/usage): what each key, tenant and model cost, OpenAI tokens and money
(core/openai/usage.py) together with the worker seconds of Cortex's own models, priced per worker kind."""
