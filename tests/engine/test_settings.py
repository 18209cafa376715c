"""Configuration: env prefix, .env file, CLI overrides, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.settings import SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in list(__import__("os").environ):
        if name.startswith("SEMANTIC_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults():
    settings = load_settings()
    assert settings.mlx_model_id == "default"
    assert settings.mlx_cache_budget_mb is None  # sized by the backend at load
    assert settings.agent_max_agents_in_memory == 32
    assert settings.cache_path == Path("~/.agent_memory/caches").expanduser()


def test_env_then_dotenv_then_flags(monkeypatch, tmp_path):
    (tmp_path / ".env").write_text("SEMANTIC_MLX_CACHE_BUDGET_MB=123\nSEMANTIC_MLX_MODEL_ID=from-dotenv\n")
    assert load_settings().mlx_cache_budget_mb == 123
    monkeypatch.setenv("SEMANTIC_MLX_MODEL_ID", "from-env")
    assert load_settings().mlx_model_id == "from-env"
    assert load_settings(mlx_model_id="from-flag").mlx_model_id == "from-flag"
    assert load_settings(mlx_model_id=None).mlx_model_id == "from-env"


def test_data_dir_moves_everything(monkeypatch, tmp_path):
    monkeypatch.setenv("SEMANTIC_DATA_DIR", str(tmp_path / "d"))
    settings = load_settings()
    assert settings.sessions_path == tmp_path / "d" / "sessions"
    assert settings.cache_path == tmp_path / "d" / "caches"
    monkeypatch.setenv("SEMANTIC_AGENT_CACHE_DIR", str(tmp_path / "kv"))
    assert load_settings().cache_path == tmp_path / "kv"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SEMANTIC_MLX_CACHE_BUDGET_MB", "-5"),
        ("SEMANTIC_MLX_MAX_BATCH_SIZE", "many"),
        ("SEMANTIC_MLX_PREFILL_STEP_SIZE", "1"),
        ("SEMANTIC_AGENT_MAX_AGENTS_IN_MEMORY", "0"),
        ("SEMANTIC_MLX_MODEL_ID", "  "),
    ],
)
def test_bad_value_names_the_variable(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert name in message and "\n" not in message
