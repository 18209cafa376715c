"""One JSON line about the machine a GPU bench runs on: versions, MLX's device, and that the project imports.

Imports what the benches need (the engine, the server, the CLI, the OpenAI client, mlx_lm.server), so a
wheel missing from the device call fails here, in seconds, rather than minutes into a bench.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import engine  # noqa: E402

engine.setup_process()  # before MLX is imported (the CPU backend loads OpenBLAS)


def version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def main() -> None:
    import mlx.core as mx
    import mlx_lm.server  # noqa: F401
    import openai  # noqa: F401

    import api.app  # noqa: F401
    import workbench.cli  # noqa: F401
    from engine.backend import installed_backend

    info = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "backend": installed_backend(),
        "device": str(mx.default_device()),
        "device_info": {k: v for k, v in mx.device_info().items() if isinstance(v, str | int)},
        "versions": {
            dist: version(dist)
            for dist in ("mlx", "mlx-cuda-13", "mlx-cpu", "mlx-lm", "transformers", "tokenizers", "torch", "openai")
        },
    }
    print(json.dumps(info))


if __name__ == "__main__":
    main()
