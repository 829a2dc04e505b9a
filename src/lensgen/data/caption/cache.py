"""Captions already paid for, keyed by the image's SHA-256 and the prompt version.

One small JSON file per entry (`CACHE/ab/abcdef....json`), written atomically: safe with many
threads or processes, and on shared storage. Only good captions are cached, so a later run asks
again for the images that failed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from lensgen.io import atomic_write_json


class CaptionCache:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    @staticmethod
    def key(image_sha256: str, prompt_version: str) -> str:
        return hashlib.sha256(f"{prompt_version}\0{image_sha256}".encode()).hexdigest()

    def _path(self, image_sha256: str, prompt_version: str) -> Path:
        key = self.key(image_sha256, prompt_version)
        return self.root / key[:2] / f"{key}.json"

    def get(self, image_sha256: str, prompt_version: str) -> dict[str, Any] | None:
        path = self._path(image_sha256, prompt_version)
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def put(self, image_sha256: str, prompt_version: str, entry: dict[str, Any]) -> None:
        atomic_write_json(self._path(image_sha256, prompt_version), entry)
