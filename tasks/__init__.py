"""Prefect tasks: thin wrappers that give each library stage a content-keyed cache."""
