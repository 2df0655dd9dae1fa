"""Signals: pure functions of a decoded image."""
