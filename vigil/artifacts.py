"""Writing model artifacts (the layout and its verification live in vigil_contracts.artifact)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vigil_contracts.artifact import BOOSTER_FILE, METADATA_FILE, MODEL_CARD_FILE, sha256_file
from vigil_contracts.feature_contract import feature_contract_hash


def write_artifact(
    model_dir: Path, booster: Any, metadata: dict[str, Any], model_card: str
) -> Path:
    """Write booster, model card and metadata (with checksums) into ``model_dir``."""
    model_dir.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(model_dir / BOOSTER_FILE))
    (model_dir / MODEL_CARD_FILE).write_text(model_card, encoding="utf-8")
    meta = dict(metadata)
    meta["booster_file"] = BOOSTER_FILE
    meta["feature_contract"] = feature_contract_hash(meta["feature_names"])
    meta["files"] = {
        name: sha256_file(model_dir / name) for name in (BOOSTER_FILE, MODEL_CARD_FILE)
    }
    (model_dir / METADATA_FILE).write_text(
        json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return model_dir
