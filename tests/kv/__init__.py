"""KV memory tests: the hot, warm and shared tiers, agents' caches and policies, transcripts, crashes."""
