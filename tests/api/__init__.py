"""API tests: contracts on a fake engine, real servers through the official SDKs, and real clients against them."""
