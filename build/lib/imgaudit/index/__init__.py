"""Indexes: a brute-force reference and FAISS implementations behind the same interfaces."""
