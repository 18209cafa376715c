"""Fixtures of the contract tests (test_contract.py): the API on a fake engine, a fresh app per test, served
in-process."""

from __future__ import annotations

import itertools

import pytest

from api.app import create_app
from engine.settings import Settings
from tests.api.client import Client
from tests.api.fake_engine import FakeEngine

_app_numbers = itertools.count()


@pytest.fixture
def engine(tmp_path) -> FakeEngine:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.safetensors").write_bytes(b"\0" * 1000)  # what Ollama's routes size
    return FakeEngine(model_dir)


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path / "data", api_key=None, admin_key=None, api_keys=None)


@pytest.fixture
def client(settings, engine) -> Client:
    return Client(create_app(settings, engine, name=f"contract_{next(_app_numbers)}"))
