"""The package's layout rules, checked on the source: module-level imports form no cycle,
claims only read results (no runner registered there, no claim importing another), and a
spawned worker's import of the runners loads no claim and no plotting library."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "covsim"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in PKG.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def module_imports(name: str) -> set[str]:
    """covsim modules imported at module level by `name` (not inside functions, not under
    `if TYPE_CHECKING`); `from pkg import sub` counts as importing the submodule."""
    tree = ast.parse(MODULES[name].read_text("utf-8"))
    is_pkg = MODULES[name].name == "__init__.py"
    out: set[str] = set()

    def visit(stmts):
        for node in stmts:
            if isinstance(node, ast.If) and not _is_type_checking(node):
                visit(node.body + node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body + node.orelse + node.finalbody)
            elif isinstance(node, ast.Import):
                out.update(a.name for a in node.names if a.name in MODULES)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative
                    pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                    pkg = pkg[: len(pkg) - node.level + 1]
                    base = ".".join(pkg + ([base] if base else []))
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    if sub in MODULES:
                        out.add(sub)
                    elif base in MODULES:
                        out.add(base)

    visit(tree.body)
    out.discard(name)
    return out


def find_cycle() -> list[str] | None:
    graph = {m: module_imports(m) for m in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            # a package's submodule importing its own package's registry is not a cycle when
            # the package only imports the submodule after defining what it re-exports: not
            # allowed here either; every edge counts
            if state.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if n not in state and (c := dfs(n)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (c := dfs(m)):
            return c
    return None


def test_no_import_cycle():
    cycle = find_cycle()
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle(monkeypatch):
    """The checker itself can fail: a synthetic a -> b -> a."""
    fake = {"covsim.a": {"covsim.b"}, "covsim.b": {"covsim.a"}}
    monkeypatch.setitem(globals(), "MODULES", dict.fromkeys(fake, None))
    monkeypatch.setitem(globals(), "module_imports", lambda m: fake[m])
    assert find_cycle() == ["covsim.a", "covsim.b", "covsim.a"]


def test_claims_only_read_results():
    claims = sorted(m for m in MODULES if m.startswith("covsim.claims."))
    assert claims, "no claim modules found"
    for m in claims:
        text = MODULES[m].read_text("utf-8")
        assert "register_runner" not in text and "@runner" not in text, m
        others = {i for i in module_imports(m) if i.startswith("covsim.claims.")}
        assert not others, f"{m} imports the claim module(s) {sorted(others)}"
        assert "covsim.runners" not in {i.rsplit(".", 1)[0] for i in module_imports(m)} | set(
            module_imports(m)
        ), f"{m} imports compute (covsim.runners)"


def test_a_worker_finds_every_runner_without_claims_plotting_or_pandas():
    code = (
        "import sys; from covsim.runners import RUNNERS; "
        "bad = [m for m in sys.modules if m.startswith(('covsim.claims', 'matplotlib', 'pandas', "
        "'covsim.plots'))]; print(sorted(RUNNERS)); print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    runners, bad = out.stdout.strip().splitlines()
    assert "'train'" in runners and "'mle'" in runners and "'bernoulli_closed_form'" in runners
    assert bad == "[]", bad
