"""Labels for a proxy set: annotators' files and feedback, and the client-side labelers."""
