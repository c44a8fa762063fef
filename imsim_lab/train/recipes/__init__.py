"""The training recipes of ``imsim-lab train RECIPE``: a registry of :class:`Recipe` definitions.

    from imsim_lab.train.recipes import get_recipe, list_recipes
    [r.name for r in list_recipes()]            # ['lyakaap', 'pairvit', 'ssquare', 'sscd']
    get_recipe("lyakaap").run(args, TrainSession())

Each recipe module defines one frozen :class:`Recipe` (its options, how it builds its
configuration and trains, its published schedule as commands) and is registered below; the
command (:mod:`imsim_lab.cli.train_cmd`) is the same for all of them. Importing this package
imports neither torch nor the recipes' training code.
"""

from __future__ import annotations

from ...errors import ImsimError
from ...registry import Registry
from . import bot, lyakaap, pairvit, sscd, ssquare
from . import ntxent  # SeungKee Jeon's candidate descriptor (issue 15)
from . import detector  # imgFp's overlay detector (issue 14)
from .base import PublishedStep, Recipe, RunStart, TrainSession, training_summary

RECIPES: Registry[Recipe] = Registry("recipe")


def register_recipe(recipe: Recipe, overwrite: bool = False) -> Recipe:
    """Add ``recipe`` under its name (a second one of the same name is refused unless ``overwrite``)."""
    RECIPES.add(recipe.name, recipe, overwrite=overwrite)
    return recipe


def list_recipes() -> list[Recipe]:
    """The registered recipes, in registration order."""
    return [RECIPES.get(n) for n in RECIPES.in_order()]


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``.

    Raises:
        ImsimError: no such recipe (the message lists the registered ones).
    """
    if name not in RECIPES:
        raise ImsimError(f"unknown recipe {name!r}; recipes: {', '.join(RECIPES.in_order()) or 'none'}")
    return RECIPES.get(name)


register_recipe(lyakaap.RECIPE)
register_recipe(pairvit.RECIPE)
register_recipe(ssquare.RECIPE)
register_recipe(sscd.RECIPE)
# VisionForce (issue 13): Bag of Tricks, D2LV's backbones, Barlow Twins pretraining
register_recipe(bot.BOT_RECIPE)
register_recipe(bot.D2LV_RECIPE)
register_recipe(bot.BARLOW_RECIPE)
register_recipe(ntxent.RECIPE)
register_recipe(detector.RECIPE)

__all__ = ["PublishedStep", "RECIPES", "Recipe", "RunStart", "TrainSession", "get_recipe", "list_recipes",
           "register_recipe", "training_summary"]
