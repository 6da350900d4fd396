"""Data shipped with Cortex (the labelled topics dataset behind the default classifier)."""
