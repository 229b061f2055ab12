"""The pool index (KMeans, radii), coverage counts, and the samplers that pick a proxy set."""
