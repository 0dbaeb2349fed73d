"""The bundled circuit-board inspection demo (recipes in ``models/recipes``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edgecoe.demo.recipe import DemoRecipe, build_demo, find_recipe, load_recipe
from edgecoe.package.manifest import MANIFEST_NAME


def build(recipe: str = "pcb-small", dest: str | Path | None = None, *, force: bool = False,
          progress: Callable[[str], None] | None = None) -> Path:
    """Build a bundled demo (``pcb-small``, ``pcb``, or a recipe file) unless it is already there.

    Args:
        dest: package directory (default: ``models/NAME``).
        force: rebuild over an existing package.
        progress: called with each expert's name as it is built.

    Returns:
        The package directory.

    Raises:
        SpecError: the recipe is invalid; InvalidInputError: ``dest`` exists and is not a package.
    """
    parsed = load_recipe(find_recipe(recipe))
    path = Path(dest) if dest is not None else Path("models") / parsed.name
    if (path / MANIFEST_NAME).is_file() and not force:
        return path  # the build is deterministic: an existing package has the same bytes
    return build_demo(parsed, path, overwrite=force, progress=progress)


__all__ = ["DemoRecipe", "build", "build_demo", "find_recipe", "load_recipe"]
