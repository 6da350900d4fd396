"""Agents (/api/v1/agents): declared per tenant (chat model, system prompt, tools, limits) and run as jobs by
`cortex.agents.run_agent` (runtime/agents), with tools that act with the caller's key."""
