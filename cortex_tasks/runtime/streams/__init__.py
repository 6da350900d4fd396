"""The stream worker's side of real-time streams: the consumer loop, windows, temporal features, detectors."""
