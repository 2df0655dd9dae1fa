"""The store: its ports (``ports``), the SQLAlchemy implementation (``sql``) and its in-memory twin
(``memory``), the schema and migrations, and what every implementation writes alike (``writes``,
``encoding``)."""
