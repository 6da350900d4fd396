"""Agent runs (cortex.agents.run_agent): a tool-calling chat model and Cortex's own capabilities as tools."""
