"""ShapesEval's held-out prompt files (JSONL, one per task, versioned: shapes-<version>-<task>.jsonl).

Built by `python -m lensgen.shapes.evalset --write` from a fixed seed; never edit by hand.
"""
