"""zoo's layering (docs/architecture.md), held: every import under zoo/ goes down, never in a circle.

Every ``import`` and ``from ... import`` of every module is read, at module level and inside
functions alike, so an import hidden in a function to dodge a circle counts as much as one at the
top. Within a layer a module may import a neighbour; the cycle check keeps that one-way.
"""

import ast
from pathlib import Path

import pytest

ZOO = Path(__file__).resolve().parents[1] / "zoo"

# Bottom to top. A module is in the layer of the longest prefix listed here.
LAYERS = (
    ("core and leaf helpers", ("zoo", "zoo.core", "zoo.flops", "zoo.config")),
    ("models", ("zoo.models",)),
    ("data", ("zoo.tokenizers", "zoo.token_files", "zoo.data", "zoo.text_data", "zoo.input_pipeline",
              "zoo.convert_gpt2")),
    ("train, evaluate, checkpoint", ("zoo.checkpoint", "zoo.save_barrier", "zoo.build",
                                     "zoo.evaluate", "zoo.train", "zoo.finetune")),
    ("sample, generate, eval_quality", ("zoo.sample", "zoo.inpaint", "zoo.generate",
                                        "zoo.metrics", "zoo.eval_quality")),
    ("cli, bench", ("zoo.cli", "zoo.bench")),
)
LEAVES = ("zoo.flops",)  # imports nothing of zoo


def module_name(path: Path, root: Path = ZOO) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    best, rank = "", None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > len(best):
                best, rank = p, i
    if rank is None:
        raise AssertionError(f"{module} is in no layer of tests/test_architecture.py; add it "
                             "there and to docs/architecture.md")
    return rank


def import_edges(root: Path = ZOO) -> dict[str, set[str]]:
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    edges = {m: set() for m in files}

    def known(name):  # the longest module of zoo that ``name`` is or lies in
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    for m, path in files.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolved against this module's package
                    base = m.split(".") if is_pkg else m.split(".")[:-1]
                    base = ".".join(base[:len(base) - node.level + 1] +
                                    ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                target = known(name)
                if target and target != m and target != "zoo" and not m.startswith(target + "."):
                    edges[m].add(target)
    return edges


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    return [f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"
            for m, targets in edges.items() for t in sorted(targets)
            if layer_of(t) > layer_of(m)]


def circles(edges: dict[str, set[str]]) -> list[str]:
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == "open":
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m)
    return cycles


def test_every_import_goes_down_a_layer_or_stays_in_its_own():
    upward = upward_imports(import_edges())
    assert not upward, "upward imports:\n  " + "\n  ".join(upward)


def test_no_import_circle():
    cycles = circles(import_edges())
    assert not cycles, "import circles:\n  " + "\n  ".join(cycles)


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaf_helpers_import_nothing_of_zoo(leaf):
    assert not import_edges()[leaf], f"{leaf} imports {sorted(import_edges()[leaf])}"


def test_model_files_import_only_core_and_leaf_helpers():
    allowed = ("zoo.core", "zoo.models", *LEAVES)
    bad = [f"{m} imports {t}" for m, targets in import_edges().items() if m.startswith("zoo.models")
           for t in targets if not any(t == a or t.startswith(a + ".") for a in allowed)]
    assert not bad, bad


def test_the_checker_finds_hidden_upward_imports_and_circles(tmp_path):
    # A model importing the training loop inside a function (the old way of dodging a circle)
    # is an upward edge, and the loop importing the model back closes a circle.
    root = tmp_path / "zoo"
    (root / "models").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "models" / "__init__.py").write_text("")
    (root / "models" / "vae.py").write_text("def main():\n    from zoo import train\n")
    (root / "train.py").write_text("from zoo.models import vae\n")
    edges = import_edges(root)
    assert upward_imports(edges) == ["zoo.models.vae (models) imports zoo.train (train, "
                                     "evaluate, checkpoint)"]
    assert circles(edges) == ["zoo.models.vae -> zoo.train -> zoo.models.vae"]


def test_files_are_short_and_leave_the_search_path_alone():
    long = {str(p.relative_to(ZOO)): n for p in ZOO.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500}
    assert not long, f"files over 500 lines: {long}"
    touched = [str(p.relative_to(ZOO)) for p in ZOO.rglob("*.py") if "sys.path" in p.read_text()]
    assert not touched, f"sys.path in {touched}"
