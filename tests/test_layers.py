"""The layer rule of docs/ARCHITECTURE.md, checked on the source with `ast` (nothing is imported).

Every .py file of sdlora/, networks/ (installed as sdlora.networks) and trainers/ (sdlora.trainers) is
parsed; every import in it counts, at module level or inside a function, relative imports resolved
against the file's own package, and `importlib.import_module("x")` / `__import__("x")` with a literal
name count as imports of x. A violation is reported as `path:line: what`.

Rules:
- networks/ imports nothing of sdlora but sdlora.networks, and nothing of the trainers.
- the core (sdlora/ except commands/, toy/, studio/, cli.py and the lazy façade in __init__.py) imports
  neither sdlora.trainers nor sdlora.toy nor sdlora.studio.
- file-dialect key prefixes and markers (kohya, LyCORIS, PEFT, ComfyUI) appear in string constants only in
  sdlora/keys.py; the algorithms' own tensor names only in keys.py and networks/. Docstrings are prose and
  do not count.
- safetensors is imported only in sdlora/files/.
"""
from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ROOTS = {"sdlora": "sdlora", "networks": "sdlora.networks", "trainers": "sdlora.trainers"}

# A module or package in these (or below them) is outside the core: the app layers.
APP_LAYERS = ("sdlora.commands", "sdlora.toy", "sdlora.studio", "sdlora.cli")
CORE_FORBIDDEN = ("sdlora.trainers", "sdlora.toy", "sdlora.studio")

# File dialects: only sdlora/keys.py may spell these.
DIALECT_MARKERS = ("lora_unet_", "lora_te", "lycoris_", "base_model.model", "diffusion_model.", "lora_A",
                   "lora_B", "lora_magnitude_vector", "lora_transformer_", "lora_prior_unet_")
# A full checkpoint's original (LDM) layout names its UNet "model.diffusion_model."; that layout has one home,
# sdlora/models/checkpoint.py (the single-file layout table), which may spell its own prefixes. ComfyUI's
# adapter dialect ("diffusion_model." without "model.") stays in keys.py.
CHECKPOINT_LAYOUT = ("sdlora.models.checkpoint", re.compile(r"(?<![A-Za-z0-9_])model\.diffusion_model\."))
# The algorithms' tensor names: keys.py and networks/ (each algorithm class declares its own).
TENSOR_NAMES = ("lora_down", "lora_up", "lora_mid", "hada_", "lokr_", "dora_scale")


def _pattern(words: tuple[str, ...]) -> re.Pattern:
    """Matches a word where it starts a name (not after a letter, digit or underscore) and, unless the word
    ends in '_' or '.', where it ends one (not before a lowercase letter: 'lora_up' but not 'lora_upscale',
    'lora_te' in 'lora_te1_' but not in 'lora_text')."""
    alts = [re.escape(w) + ("" if w[-1] in "_." else "(?![a-z])") for w in words]
    return re.compile("(?<![A-Za-z0-9_])(" + "|".join(alts) + ")")


DIALECT_RE, TENSOR_RE = _pattern(DIALECT_MARKERS), _pattern(TENSOR_NAMES)


# ------------------------------------------------------------------------------------------ parsing
def module_of(rel: str) -> tuple[str, bool]:
    """('sdlora.networks.lora', False) for 'networks/lora.py'; ('sdlora.tools', True) for
    'sdlora/tools/__init__.py'. ``rel`` is a path relative to the repository, with '/'."""
    parts = rel.removesuffix(".py").split("/")
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join([ROOTS[parts[0]], *parts[1:]]), is_package


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(tree: ast.AST, module: str, is_package: bool = False) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import anywhere in ``tree``. ``from a import b`` yields both
    a and a.b (b may be a submodule); a literal importlib.import_module / __import__ name counts."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, module, is_package)
            yield node.lineno, base
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{base}.{alias.name}"
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name in ("import_module", "__import__"):
                yield node.lineno, node.args[0].value


def _docstring_nodes(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                ids.add(id(first.value))
    return ids


def strings_of(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, text) of every string constant in ``tree`` but docstrings (f-string parts included)."""
    skip = _docstring_nodes(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            yield node.lineno, node.value


# ------------------------------------------------------------------------------------------ rules
def _under(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def is_core(module: str) -> bool:
    return module != "sdlora" and module.startswith("sdlora") and not _under(module, APP_LAYERS) \
        and not _under(module, ("sdlora.networks", "sdlora.trainers"))


def _import_violation(module: str, name: str) -> str | None:
    """Why importing ``name`` from ``module`` breaks the rule, or None."""
    if _under(module, ("sdlora.networks",)):
        if (_under(name, ("sdlora",)) and not _under(name, ("sdlora.networks",))) \
                or _under(name, ("trainers", "networks")):
            return f"networks/ imports {name} (networks imports only torch)"
    elif is_core(module) and _under(name, CORE_FORBIDDEN):
        return f"the core imports {name} (an app layer)"
    if _under(name, ("safetensors",)) and not _under(module, ("sdlora.files",)):
        return f"imports {name} outside sdlora/files/ (open files through sdlora.files)"
    return None


def check_source(rel: str, source: str) -> list[str]:
    """Every layer-rule violation in one file's ``source``, as 'rel:line: what', sorted by line; one per
    import statement (``from a.b import c`` names a.b, not also a.b.c)."""
    module, is_package = module_of(rel)
    tree = ast.parse(source, filename=rel)
    found: dict[int, str] = {}
    for line, name in imports_of(tree, module, is_package):
        why = _import_violation(module, name)
        if why and line not in found:
            found[line] = why
    keys = []
    if module != "sdlora.keys":
        tensor_ok = _under(module, ("sdlora.networks",))
        for line, text in strings_of(tree):
            if module == CHECKPOINT_LAYOUT[0]:
                text = CHECKPOINT_LAYOUT[1].sub("", text)
            m = DIALECT_RE.search(text) or (None if tensor_ok else TENSOR_RE.search(text))
            if m:
                keys.append((line, f"key literal {m.group(1)!r} in {text[:60]!r} (keys belong in keys.py)"))
    return [f"{rel}:{line}: {why}" for line, why in sorted(set(found.items()) | set(keys))]


def tree_files() -> list[str]:
    return sorted(str(p.relative_to(REPO)).replace("\\", "/") for root in ROOTS
                  for p in (REPO / root).rglob("*.py"))


# ------------------------------------------------------------------------------------------ tests
def test_the_tree_keeps_the_layer_rule():
    files = tree_files()
    assert len(files) > 60  # the walk found the package (not an empty or wrong folder)
    found = [v for rel in files for v in check_source(rel, (REPO / rel).read_text(encoding="utf-8"))]
    assert not found, "layer rule broken:\n" + "\n".join(found)


def test_module_names_and_relative_imports_resolve():
    assert module_of("networks/lora.py") == ("sdlora.networks.lora", False)
    assert module_of("trainers/__init__.py") == ("sdlora.trainers", True)
    assert module_of("sdlora/tools/bake.py") == ("sdlora.tools.bake", False)
    tree = ast.parse("from . import base\nfrom ..keys import split_key\nfrom .x import y\n")
    got = list(imports_of(tree, "sdlora.tools.bake"))
    assert (1, "sdlora.tools.base") in got and (2, "sdlora.keys.split_key") in got and (3, "sdlora.tools.x.y") in got
    got = list(imports_of(ast.parse("from .lora import LoRAModule\n"), "sdlora.networks", is_package=True))
    assert (1, "sdlora.networks.lora") in got


PLANTED = [
    # (file, source, the violation's line, a word of its message)
    ("networks/lora.py", "import torch\nfrom sdlora.keys import split_key\n", 2, "networks/ imports sdlora.keys"),
    ("networks/loha.py", "def f():\n    import sdlora.trainers.loop\n", 2, "networks/ imports sdlora.trainers"),
    ("networks/lokr.py", "def f():\n    from ..adapters import load\n", 2, "networks/ imports sdlora.adapters"),
    ("networks/full.py", "import trainers.loop\n", 1, "networks/ imports trainers"),
    ("sdlora/tools/bake.py", "def f():\n    from sdlora.trainers.config import load_config\n", 2,
     "the core imports sdlora.trainers"),
    ("sdlora/evaluation/run.py", "def f():\n    from ..toy import world\n", 2, "the core imports sdlora.toy"),
    ("sdlora/inference/stack.py", "from sdlora import studio\n", 1, "the core imports sdlora.studio"),
    ("sdlora/models/opening.py", "import importlib\nm = importlib.import_module('sdlora.trainers.loop')\n", 2,
     "the core imports sdlora.trainers"),
    ("sdlora/adapters/read.py", "PREFIX = 'lora_unet_'\n", 1, "'lora_unet_'"),
    ("sdlora/tools/convert.py", "def f(c):\n    return f'lora_te{c}_text_model'\n", 2, "'lora_te'"),
    ("trainers/loop.py", "KEY = 'base_model.model.unet'\n", 1, "'base_model.model'"),
    ("networks/base.py", "NAME = 'lora_magnitude_vector'\n", 1, "'lora_magnitude_vector'"),
    ("sdlora/adapters/write.py", "x = {'lycoris_': 1}\n", 1, "'lycoris_'"),
    ("sdlora/tools/extract.py", "SUFFIX = '.lora_down.weight'\n", 1, "'lora_down'"),
    ("trainers/state.py", "n = 'hada_w1_a'\n", 1, "'hada_'"),
    ("sdlora/models/single_file.py", "p = 'model.diffusion_model.'\n", 1, "'diffusion_model.'"),
    ("sdlora/models/checkpoint.py", "P = 'diffusion_model.input_blocks'\n", 1, "'diffusion_model.'"),
    ("sdlora/tools/extract.py", "def f():\n    from safetensors.torch import save_file\n", 2,
     "imports safetensors.torch outside sdlora/files/"),
    ("trainers/cache.py", "import safetensors\n", 1, "imports safetensors outside"),
]


@pytest.mark.parametrize("rel,source,line,what", PLANTED, ids=[f"{p[0]}:{p[3]}" for p in PLANTED])
def test_a_planted_violation_fails(rel, source, line, what):
    found = check_source(rel, source)
    assert any(v.startswith(f"{rel}:{line}: ") and what in v for v in found), found


ALLOWED = [
    ("sdlora/keys.py", "P = 'lora_unet_'\nQ = 'lora_down'\nR = 'base_model.model'\n"),
    ("networks/lora.py", "SUFFIXES = ('lora_down.weight', 'lora_up.weight', 'dora_scale')\n"),
    ("networks/network.py", "from .base import AdapterModule\nfrom sdlora.networks.lora import LoRAModule\n"),
    ("sdlora/files/tensors.py", "from safetensors import safe_open\n"),
    ("sdlora/commands/train.py", "from sdlora.trainers.config import load_config\n"),
    ("sdlora/toy/demo.py", "from sdlora.trainers.loop import Trainer\n"),
    ("sdlora/cli.py", "COMMANDS = {'train': 'sdlora.commands.train:run'}\n"),
    ("trainers/loop.py", "from sdlora.adapters import save_adapter\nfrom sdlora.networks import Network\n"),
    ("sdlora/adapters/read.py", "def f():\n    '''Reads lora_unet_ keys (a docstring is prose).'''\n    return 1\n"),
    ("sdlora/tools/extract.py", "OUT = 'model.safetensors'\nW = 'lora_upscale'\n"),
    ("sdlora/models/checkpoint.py", "UNET = 'model.diffusion_model.'\n"),
]


@pytest.mark.parametrize("rel,source", ALLOWED, ids=[a[0] for a in ALLOWED])
def test_what_the_rule_allows_passes(rel, source):
    assert check_source(rel, source) == []
