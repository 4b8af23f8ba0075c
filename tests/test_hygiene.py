"Notebook hygiene: the rules of style.md that a notebook cannot check about itself."
import ast, io, json, re, subprocess, sys, tokenize
from configparser import ConfigParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS, LIB = ROOT / "nbs", ROOT / "vit_plasticity"
LIB_NBS = sorted(NBS.glob("[0-9][0-9]*_*.ipynb"))
EXP_NBS = sorted((NBS / "experiments").glob("*.ipynb"))

def cells(path: Path) -> list[dict]: return json.loads(path.read_text(encoding="utf-8"))["cells"]
def source(cell: dict) -> str: return "".join(cell["source"])
def is_exported(cell: dict) -> bool: return bool(re.search(r"^#\|\s*export", source(cell), re.M))
def default_exp(path: Path) -> str | None:
    for c in cells(path):
        if m := re.search(r"^#\|\s*default_exp\s+(\S+)", source(c), re.M): return m.group(1)
    return None

def test_settings_keep_papermill_tags():
    cfg = ConfigParser(delimiters=["="]); cfg.read(ROOT / "settings.ini")
    assert cfg["DEFAULT"]["allowed_cell_metadata_keys"].split(",") == ["tags"]

@pytest.mark.parametrize("nb", LIB_NBS, ids=lambda p: p.name)
def test_library_notebook_exports_module_of_its_name(nb):
    assert default_exp(nb) == re.sub(r"^\d+[a-z]?_", "", nb.stem), f"{nb.name}: module name must match notebook name"

def test_every_module_has_its_notebook():
    for py in LIB.glob("*.py"):
        if py.name in ("__init__.py", "_modidx.py"): continue
        m = re.search(r"File to edit: \.\./nbs/(\S+\.ipynb)", py.read_text(encoding="utf-8"))
        assert m and (NBS / m.group(1)).exists(), f"{py.name} has no notebook: orphan module"

@pytest.mark.parametrize("nb", LIB_NBS + EXP_NBS + [NBS / "index.ipynb"], ids=lambda p: p.name)
def test_code_cells_are_small(nb):
    for i, c in enumerate(cells(nb)):
        n = len(source(c).splitlines())
        assert c["cell_type"] != "code" or n <= 30, f"{nb.name} cell {i} has {n} lines (cap 30)"

@pytest.mark.parametrize("nb", LIB_NBS, ids=lambda p: p.name)
def test_notebooks_import_only_lower_numbered_modules(nb):
    order = {default_exp(p): i for i, p in enumerate(LIB_NBS)}
    me = order[default_exp(nb)]
    exported = [c for c in cells(nb) if is_exported(c)]  # examples may use anything
    for mod in re.findall(r"from vit_plasticity\.(\w+) import|import vit_plasticity\.(\w+)", "\n".join(map(source, exported))):
        name = mod[0] or mod[1]
        assert order.get(name, -1) < me, f"{nb.name} imports vit_plasticity.{name}, which is not lower-numbered"

@pytest.mark.parametrize("nb", EXP_NBS, ids=lambda p: p.name)
def test_experiment_notebook_has_one_literal_parameters_cell(nb):
    params = [c for c in cells(nb) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, f"{nb.name}: exactly one cell must be tagged `parameters`"
    for node in ast.parse(source(params[0])).body:
        assert isinstance(node, ast.AnnAssign), f"{nb.name}: parameters are `name: type = value  # help` lines"
        ast.literal_eval(node.value)
    assert not any(is_exported(c) for c in cells(nb)), "experiment notebooks export nothing"
    import papermill
    declared = {n.target.id for n in ast.parse(source(params[0])).body}
    assert set(papermill.inspect_notebook(str(nb))) == declared, "papermill cannot parse a parameter line (no '=' in help comments)"

def test_library_has_no_undefined_names():
    "Exported code must not lean on notebook globals."
    out = subprocess.run([sys.executable, "-m", "pyflakes", str(LIB)], capture_output=True, text=True)
    undefined = [l for l in out.stdout.splitlines() if "undefined name" in l]
    assert not undefined, "\n".join(undefined)

def test_readme_is_generated_from_index():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_readme.py"), "--check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr + " (run `make readme`)"

def test_readme_images_exist():
    "Every image the README shows is a committed file (the links are rewritten from nbs/index.ipynb's `images/...`)."
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (ROOT / "README.md").read_text(encoding="utf-8"))
    assert links, "the README shows no figure"
    missing = [l for l in links if not l.startswith("http") and not (ROOT / l).is_file()]
    assert not missing, f"README links to missing images: {missing}"


# Exported modules: lines of at most 110 characters, one statement a line (style.md, "Density is vertical").
MAX_LINE = 110
MODULES = sorted(p for p in LIB.glob("*.py") if p.name != "_modidx.py")  # _modidx: nbdev's own index


def long_lines(text: str) -> list[int]:
    "Lines over MAX_LINE characters, except nbdev's generated `__all__` (which nbdev wraps at 120 itself)."
    tree = ast.parse(text)
    generated = {l for n in tree.body if isinstance(n, ast.Assign)
                 and any(isinstance(t, ast.Name) and t.id == "__all__" for t in n.targets)
                 for l in range(n.lineno, n.end_lineno + 1)}
    return [i for i, l in enumerate(text.splitlines(), 1) if len(l) > MAX_LINE and i not in generated]


def semicolon_lines(text: str) -> list[int]:
    "Lines where `;` joins statements: read as tokens, so a ';' inside a string or a comment does not count."
    toks = tokenize.generate_tokens(io.StringIO(text).readline)
    return sorted({t.start[0] for t in toks if t.type == tokenize.OP and t.string == ";"})


def test_line_checks_catch_violations():
    "The two checks can fail: a long line and a `;` are found, strings and comments holding ';' are not."
    code = ("__all__ = ['" + "a" * 120 + "']\n" + "s = 'x; y'  # a; b\n" + "a = 1; b = 2\n"
            + "t = '" + "z" * 120 + "'\n")
    assert long_lines(code) == [4]
    assert semicolon_lines(code) == [3]


@pytest.mark.parametrize("py", MODULES, ids=lambda p: p.name)
def test_module_lines_are_short(py):
    bad = long_lines(py.read_text(encoding="utf-8"))
    assert not bad, f"{py.name}: lines {bad} are over {MAX_LINE} characters (wrap them in the notebook, export)"


@pytest.mark.parametrize("py", MODULES, ids=lambda p: p.name)
def test_module_has_no_semicolon_joined_statements(py):
    bad = semicolon_lines(py.read_text(encoding="utf-8"))
    assert not bad, f"{py.name}: lines {bad} join statements with ';' (one statement a line)"


# Library notebooks: the examples and the prose keep the same 110 characters (exported cells are checked
# above, as the modules they become). A markdown table row, or a line that is one URL or link, cannot be
# wrapped.
LONE_LINK = re.compile(r"\s*(#\s*)?(<?https?://\S+>?|!?\[[^\]]*\]\(\S+\))\s*")


def long_cell_lines(cell: dict) -> list[int]:
    "Lines over MAX_LINE characters of a markdown or non-exported code cell, but table rows and lone links."
    text = source(cell)
    if cell["cell_type"] not in ("code", "markdown") or is_exported(cell): return []
    markdown = cell["cell_type"] == "markdown"
    return [i for i, l in enumerate(text.splitlines(), 1)
            if len(l) > MAX_LINE and not (markdown and l.startswith("|")) and not LONE_LINK.fullmatch(l)]


def test_cell_line_check_catches_violations():
    "A long example or prose line is found; exported cells, table rows and lone links are not."
    long, url = "x" * MAX_LINE, "https://example.org/" + "a" * MAX_LINE
    assert long_cell_lines({"cell_type": "code", "source": ["y = 1\n", f"s = '{long}'"]}) == [2]
    assert long_cell_lines({"cell_type": "code", "source": ["#| export\n", f"s = '{long}'"]}) == []
    prose = [f"| {long} |\n", f"{url}\n", f"[the paper]({url})\n", f"see {url}\n", f"{long} y"]
    assert long_cell_lines({"cell_type": "markdown", "source": prose}) == [4, 5]
    assert long_cell_lines({"cell_type": "code", "source": [f"| {long} |"]}) == [1]


@pytest.mark.parametrize("nb", LIB_NBS, ids=lambda p: p.name)
def test_notebook_lines_are_short(nb):
    bad = {i: lines for i, c in enumerate(cells(nb)) if (lines := long_cell_lines(c))}
    assert not bad, f"{nb.name}: lines over {MAX_LINE} characters, by cell: {bad} (wrap them)"


def joining_semicolons(text: str) -> list[int]:
    "Lines where `;` joins two statements (not a trailing `;`, which hides a notebook cell's result)."
    toks = list(tokenize.generate_tokens(io.StringIO(text).readline))
    ends = (tokenize.NEWLINE, tokenize.NL, tokenize.COMMENT, tokenize.ENDMARKER)
    return sorted({t.start[0] for t, nxt in zip(toks, toks[1:])
                   if t.type == tokenize.OP and t.string == ";" and nxt.type not in ends})


def test_semicolon_check_catches_violations():
    "A `;` between two statements is found; a trailing one, and one in a string or a comment, are not."
    assert joining_semicolons("a = 1; b = 2\nax.plot(x);\ns = 'x; y'  # a; b\n") == [1]


@pytest.mark.parametrize("nb", LIB_NBS, ids=lambda p: p.name)
def test_notebook_examples_have_one_statement_a_line(nb):
    examples = [source(c) for c in cells(nb) if c["cell_type"] == "code" and not is_exported(c)]
    bad = {i: lines for i, text in enumerate(examples) if (lines := joining_semicolons(text))}
    assert not bad, f"{nb.name}: statements joined with ';' in example cells (index among them: lines) {bad}"
