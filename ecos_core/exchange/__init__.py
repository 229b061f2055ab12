"""The round's messages (probe, response, invitation), their signatures and transport, and the edge client."""
