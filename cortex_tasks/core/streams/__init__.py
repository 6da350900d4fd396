"""Real-time streams, the part the gateway and the workers share: declarations and their validation, event
checking, the Redis keys of a stream, and the stored history (closed windows and verdicts)."""
