"""The pipeline engine: routing, acknowledgement, retries, dead letter, supervision."""
