"""python -m tfquant.quantize: quantize a TF causal-LM SavedModel.

With no --input_model, the embedded default model is used: a tiny random GPT-J
(configs/gptj-tiny.yaml) exported once and cached under ~/.cache/tfquant, so the
command works offline on a fresh machine.
"""
from __future__ import annotations

import argparse
import os
import sys

from .errors import ArgumentParser, UserError, run_cli
from .fsutil import cache_root
from .recipe import InputOptions, Recipe, add_arguments, merge, yaml_section

PRESETS_DIR = "recipes"  # under configs/: --config NAME finds configs/recipes/NAME.yaml


def default_model_dir() -> str:
    """Export the embedded default model once; later runs reuse the cached SavedModel."""
    from .assets import config_path
    from .models import prepare_from_config

    target = os.path.join(cache_root(), "gptj-tiny")
    if not os.path.isfile(os.path.join(target, "saved_model.pb")):
        os.makedirs(cache_root(), exist_ok=True)
        print(f"preparing the embedded default model (tiny random GPT-J) in {target}", file=sys.stderr)
        prepare_from_config(config_path("gptj-tiny.yaml"), target, overwrite=True)
    return target


def parse_args(argv=None):
    p = ArgumentParser(prog="python -m tfquant.quantize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input_model",
                   help="SavedModel folder, or a folder holding saved_model/<version>/ as save_pretrained(saved_model=True) "
                        "writes (default: the embedded tiny GPT-J)")
    p.add_argument("--output_dir", required=True, help="where model/, the graph dumps and report.json go")
    p.add_argument("--config", help="a preset (w8a8, w8a8-dynamic, w8a16, w4a16-g32, w4a16-g32-asym, w4a16-g128, bf16, "
                                    "fp16, mxfp6, ...: configs/recipes/) or a YAML recipe file; its keys set the "
                                    "defaults of the flags below")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output_dir")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_arguments(p.add_argument_group("scheme (a recipe's quantization: keys)"), Recipe)
    add_arguments(p.add_argument_group("inputs and calibration"), InputOptions)
    return p.parse_args(argv)


def recipe_path(config: str) -> str:
    """A file path as given, else the preset of that name (configs/recipes/NAME.yaml)."""
    if os.path.exists(config) or config.endswith((".yaml", ".yml")) or os.sep in config:
        return config
    from .assets import config_path, presets

    if config not in presets():
        raise UserError(f"--config {config}: no such file, and no preset of that name (presets: {', '.join(presets())})")
    return config_path(os.path.join(PRESETS_DIR, config + ".yaml"))


def resolve_options(args):
    """(Recipe, InputOptions): flags given on the command line win over the --config recipe, which wins
    over the defaults."""
    section = yaml_section(recipe_path(args.config)) if args.config else {}
    given = vars(args)
    return merge(Recipe, given, section), merge(InputOptions, given, section)


def main(argv=None) -> int:
    args = parse_args(argv)
    recipe, inputs = resolve_options(args)
    recipe.resolved()  # a combination that does not exist is one line, before anything is loaded
    from .fsutil import check_output_dir

    check_output_dir(args.output_dir, args.overwrite)
    src = args.input_model or default_model_dir()
    from .convert import ConvertSavedModel
    from .report import format_summary

    report = ConvertSavedModel(src, args.output_dir, recipe=recipe, inputs=inputs, overwrite=args.overwrite,
                               progress=not args.quiet)
    print(format_summary(report))
    print(f"wrote {os.path.abspath(args.output_dir)}")
    return 0


def _console():  # console_scripts entry point
    sys.exit(run_cli(main))


if __name__ == "__main__":
    _console()
