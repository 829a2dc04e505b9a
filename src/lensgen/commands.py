"""Inference commands: `lensgen generate` and `lensgen demo`."""

from __future__ import annotations

import argparse


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    top = groups[""]
    p = top.add_parser("generate", help="generate an image from a prompt")
    p.set_defaults(func=lambda a: 0)
