"""Policy: turns signals and lookups into verdicts with reasons."""
