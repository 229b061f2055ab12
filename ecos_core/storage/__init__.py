"""Where artifacts live: the fsspec store, the key of each artifact, content keys."""
