#!/usr/bin/env python
"""Render README.md from nbs/index.ipynb without Quarto (nbdev_readme needs it).

Markdown cells are copied, code cells become ```python blocks followed by their text outputs; cells marked
`#| hide` are left out, cells marked `#| echo: false` show only their outputs, and nbdev directives (`#| ...`)
are stripped. Images belong in markdown cells as links to
committed files. `python scripts/make_readme.py --check` exits 1 when README.md is stale.
"""
import json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADER = "<!-- Generated from nbs/index.ipynb by scripts/make_readme.py: edit the notebook, then `make readme`. -->\n\n"

def _text(src) -> str: return "".join(src) if isinstance(src, list) else src

def _outputs(cell) -> list[str]:
    "Text outputs of a code cell (streams and plain-text results), in order."
    outs = []
    for o in cell.get("outputs", []):
        if o["output_type"] == "stream" and o.get("name") == "stdout": outs.append(_text(o["text"]))
        elif o["output_type"] in ("execute_result", "display_data") and "text/markdown" in o["data"]:
            outs.append(None); outs.append(_text(o["data"]["text/markdown"]))
        elif o["output_type"] in ("execute_result", "display_data") and "text/plain" in o["data"]:
            outs.append(_text(o["data"]["text/plain"]))
    return outs

def _code_block(cell) -> str:
    lines = _text(cell["source"]).splitlines()
    if any(re.match(r"#\|\s*hide\b", l) for l in lines): return ""
    code = "\n".join(l for l in lines if not l.startswith("#|")).strip()
    if not code: return ""
    echo = not any(re.match(r"#\|\s*echo:\s*false\b", l) for l in lines)
    md, raw = [f"```python\n{code}\n```\n"] if echo else [], False
    for out in _outputs(cell):
        if out is None: raw = True; continue
        md.append(out.rstrip() + "\n" if raw else f"```\n{out.rstrip()}\n```\n"); raw = False
    return "\n".join(md)

def _markdown(cell) -> str:
    "A markdown cell, its links to files (`images/...`, `../runs/...`) made relative to the repository root."
    text = re.sub(r"\]\((images/[^)]+)\)", r"](nbs/\1)", _text(cell["source"]).strip())
    return re.sub(r"\]\(\.\./([^)]+)\)", r"](\1)", text) + "\n"

def render(nb_path: Path = ROOT / "nbs" / "index.ipynb") -> str:
    nb = json.loads(nb_path.read_text(encoding="utf-8"))
    parts = [_markdown(c) if c["cell_type"] == "markdown" else _code_block(c) for c in nb["cells"]]
    parts = [p for p in parts if p.strip() and not p.startswith("#| default_exp")]
    return HEADER + "\n".join(parts)

if __name__ == "__main__":
    readme, text = ROOT / "README.md", render()
    if "--check" in sys.argv:
        if readme.read_text(encoding="utf-8") != text: sys.exit("README.md is stale: run `make readme`")
    else: readme.write_text(text, encoding="utf-8")
