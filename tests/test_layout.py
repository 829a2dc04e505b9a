"""The package map holds: a stage imports only the stages below it, and no modules import each other in a circle.

Every `import lensgen...` counts, including those inside functions (a lazy import is still an arrow).
docs/architecture.md draws the same map.
"""

import ast
from collections import defaultdict
from pathlib import Path

import lensgen

ROOT = Path(lensgen.__file__).parent

# Bottom to top. A stage may import the stages on lower lines (and those beside it on its own line), never above.
LAYERS = [
    ("__init__", "errors", "io", "config", "sizes", "images", "plots", "compute"),  # ground: used everywhere
    ("shapes",),  # the procedural world, its captions and its judge: no model code
    ("models",),  # transformer, text encoders, codecs
    ("flow",),  # noise schedules and the sampler
    ("inference",),  # the pipeline and `lensgen generate`
    ("data",),  # curation, captioning, shards, buckets, training loaders
    ("reasoner",),  # prompt rewriting: the Shapes planner and an LLM (through data's chat client)
    ("train",),  # pretraining, the Shapes VAE
    ("eval",),  # ShapesEval (and the public benchmarks)
    ("rl",),  # RL post-training (DiffusionNFT): rewards, the NFT objective and trainer
    ("distill",),  # few-step distillation (Lens-Turbo)
    ("serve",),  # `lensgen serve`: the HTTP API, dynamic batching, the web page
    ("demo", "cli"),  # commands
]
LEVEL = {stage: i for i, stages in enumerate(LAYERS) for stage in stages}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}

    def resolve(name: str) -> str | None:  # `lensgen.a.b.func` -> the module `lensgen.a.b`
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lensgen":
                # `from pkg import submodule` depends on the submodule; `from mod import name` on mod
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                           for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.split(".")[0] == "lensgen"]
            else:
                continue
            for target in targets:
                found = resolve(target)
                if found and found != name:
                    graph[name].add(found)
    return graph


def test_every_stage_is_on_the_map():
    stages = {stage(module_name(p)) for p in ROOT.rglob("*.py")}
    assert stages <= set(LEVEL), f"stages missing from LAYERS: {sorted(stages - set(LEVEL))}"


def test_no_import_runs_upward():
    wrong = sorted(f"{a} -> {b}" for a, targets in import_graph().items() for b in targets
                   if LEVEL[stage(b)] > LEVEL[stage(a)])
    assert not wrong, "imports against the stage order:\n" + "\n".join(wrong)


def test_no_import_cycle():
    graph = import_graph()
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt] if nxt in path else [node, nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, nxt])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            raise AssertionError("import cycle: " + " -> ".join(cycle))
