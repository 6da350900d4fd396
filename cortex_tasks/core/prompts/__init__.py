"""Prompt templates as versioned assets (/api/v1/prompts): numbered, immutable versions, one in production,
promoted and rolled back like registered models; chains and agents name them `name@version` or `name`."""
