"""Raw review dumps -> normalized Parquet (interactions, items, users, behaviour text)."""
