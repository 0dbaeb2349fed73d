"""The bundled circuit-board inspection demo (recipes in ``models/recipes``)."""

from edgecoe.demo.recipe import DemoRecipe, build_demo, find_recipe, load_recipe

__all__ = ["DemoRecipe", "build_demo", "find_recipe", "load_recipe"]
