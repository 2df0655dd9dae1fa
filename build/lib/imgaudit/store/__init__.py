"""The store: SQLAlchemy schema, the queue (claim / lease / complete) and migrations."""
