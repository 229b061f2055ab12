"""The feature space: the backbones, batched embedding, the pool-adapted CNN beside them."""
