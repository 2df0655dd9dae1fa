"""Sources: where image references come from (folder, URL list; external tables later)."""
