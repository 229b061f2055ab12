"""Training on a proxy set: the Lightning model, semi-supervised and distillation variants."""
