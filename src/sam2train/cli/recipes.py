"""`sam2train recipes`: the shipped recipes, one line each (name and the first comment line of its YAML)."""

from __future__ import annotations

import argparse


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "recipes",
        help="list the shipped recipes (use one with --config NAME or `base: NAME` in your YAML)",
        description="The recipes shipped with sam2train. `sam2train fit --config NAME` runs one; your own YAML "
        "extends one with `base: NAME` from any folder.",
    )
    p.add_argument("--path", action="store_true", help="also print the folder the recipes live in")
    p.set_defaults(run=cmd_recipes)


def cmd_recipes(args: argparse.Namespace) -> int:
    from sam2train.config.recipes import RECIPES_DIR, recipe_table

    table = recipe_table()
    width = max(len(name) for name, _ in table) + 2
    for name, description in table:
        print(f"{name:<{width}}{description}")
    if args.path:
        print(f"\n(files in {RECIPES_DIR})")
    return 0
