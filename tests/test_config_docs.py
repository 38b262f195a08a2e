"""docs/CONFIG.md names every settings key (a section's keys may share its `section.*` row)."""

from pathlib import Path

from pydantic import BaseModel

from touchpoint.core.config import Settings

DOC = (Path(__file__).resolve().parents[1] / "docs" / "CONFIG.md").read_text()


def _keys(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _keys(annotation, f"{prefix}{name}.")
        else:
            yield prefix, name


def test_every_settings_key_is_documented():
    missing = []
    for prefix, name in _keys(Settings):
        if prefix:
            row = next((line for line in DOC.splitlines() if line.startswith(f"| `{prefix}*`")), "")
            if f"`{name}`" not in row:
                missing.append(prefix + name)
        elif f"`{name}`" not in DOC:
            missing.append(name)
    assert missing == []
