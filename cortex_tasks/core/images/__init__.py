"""Images as inputs: reading, checking and staging them (intake.py), shared by the gateway and workers."""
