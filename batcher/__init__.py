"""batcher: turn spreadsheets of gift-card recipients into provider orders, exactly once per row."""

__version__ = "0.1.0"
