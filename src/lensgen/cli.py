"""The `lensgen` command line.

Each capability lives in its own module and registers its sub-commands here through a
`register(groups)` function, so this file stays a table of contents. Heavy imports (torch,
transformers) happen inside the command handlers, which keeps `lensgen --help` instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from lensgen.errors import LensgenWarning, UserError

# Modules that contribute commands; each defines register(groups: dict[str, argparse._SubParsersAction]).
COMMAND_MODULES = [
    "lensgen.inference.generate",
    "lensgen.reasoner.cli",
    "lensgen.serve.cli",
    "lensgen.demo",
    "lensgen.train.cli",
    "lensgen.train.plan_cli",
    "lensgen.data.cli",
    "lensgen.eval.cli",
    "lensgen.rl.cli",
    "lensgen.distill.cli",
    "lensgen.data.curate.cli",
    "lensgen.data.caption.cli",
    "lensgen.data.rl_prompts.cli",
]

GROUPS = {
    "data": "data work: procedural Shapes data, curation, captioning, statistics",
    "eval": "benchmarks: score a model (or any prompt -> image callable)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lensgen",
        description="lensgen: the Lens text-to-image recipe: data curation and captioning, the Shapes world, "
                    "mixed-resolution pretraining, RL post-training, few-step distillation, inference, serving "
                    "and evaluation. Each command has its own --help.",
    )
    from lensgen import __version__

    parser.add_argument("--version", action="version", version=f"lensgen {__version__}")
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {"": top}
    for name, help_text in GROUPS.items():
        group_parser = top.add_parser(name, help=help_text, description=help_text)
        groups[name] = group_parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND")
        group_parser.set_defaults(func=lambda args, p=group_parser: p.print_help() or 2)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(groups)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Our warnings as one line on stderr; everyone else's as Python prints them."""
    if issubclass(category, LensgenWarning):
        print(f"lensgen: warning: {message}", file=file or sys.stderr)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = warnings.showwarning


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _show_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        code = args.func(args)
    except UserError as err:
        print(f"lensgen: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lensgen: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


def run() -> None:
    """The `lensgen` command and `python -m lensgen.cli` (what torchrun starts): `main`, then exit.

    A torchrun rank leaves its process group cleanly before returning here, yet torch's C++ threads can still
    abort the interpreter's teardown ("terminate called without an active exception", SIGABRT), and torchrun
    then reports a finished run as failed. Every file is written and closed by then, so a rank exits at once."""
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
