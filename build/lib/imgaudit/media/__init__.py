"""Getting image bytes safely (SSRF-guarded downloads, bounded local reads) and decoding them defensively."""
