"""Persistent KV memory: a hot tier of live caches in device memory and a warm tier of blocks on disk."""
