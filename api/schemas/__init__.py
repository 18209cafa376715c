"""Pydantic models of every request body: they validate requests and generate the OpenAPI document."""
