"""Audio as an input (transcribe): reading, checking and staging it (intake.py)."""
