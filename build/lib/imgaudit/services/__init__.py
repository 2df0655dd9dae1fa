"""Services: what the entry points call. No printing, no exiting, no HTTP here."""
