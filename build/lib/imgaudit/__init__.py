"""imgaudit: image review for e-commerce content."""

__version__ = "0.1.0"
