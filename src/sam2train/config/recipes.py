"""The shipped recipes: the YAML files inside the package (`sam2train/recipes/*.yaml`, package data), so a
pip-installed sam2train has them too. In a clone, `configs/` is a link to the same folder.

A recipe is named by its file stem (`davis`) or file name (`davis.yaml`): `--config davis` and `base: davis` find
it from any folder. Its first comment line is its one-line description (`sam2train recipes`).
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

RECIPES_DIR = Path(str(importlib.resources.files("sam2train") / "recipes"))
"""The folder of shipped recipes (inside the installed package)."""


def recipe_names() -> list[str]:
    """The shipped recipes' names (file stems), sorted."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def shipped_recipe(name: str) -> Path | None:
    """The shipped recipe file for `name` (`davis` or `davis.yaml`; no folder part), None if there is none."""
    if not name or "/" in name or "\\" in name:
        return None
    path = RECIPES_DIR / (name if name.endswith(".yaml") else f"{name}.yaml")
    return path if path.is_file() else None


def recipe_description(path: Path) -> str:
    """The first comment line of a recipe file (without `#`), '' when it has none before its first key."""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            return stripped.lstrip("#").strip()
        if stripped:
            return ""
    return ""


def recipe_table() -> list[tuple[str, str]]:
    """(name, one-line description) of every shipped recipe, sorted by name."""
    return [(name, recipe_description(RECIPES_DIR / f"{name}.yaml")) for name in recipe_names()]
