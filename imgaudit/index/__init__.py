"""Indexes: vector, hash and full-text interfaces with reference and fast backends, and the dedup replica."""
