"""The pool as a catalog of content-addressed shards: any size, never held whole.

shards    one shard = a fixed number of decoded, resized images in one .npy, named by
          its sha256 (a changed shard is detected and refused).
catalog   one row per pool image: id, shard, row, label (-1: unlabelled), domain, uri.
sources   what a user brings (manifest, image folder, built-in domain) as catalog rows.
ingest    decoding a chunk of source rows into a shard, with per-row errors.
layout    where a pool's objects live under its URL.
"""
