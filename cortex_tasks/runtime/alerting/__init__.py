"""Alert processing (dedup, grouping, cooldown), delivery to channels, Cortex's own rules, stream reports."""
