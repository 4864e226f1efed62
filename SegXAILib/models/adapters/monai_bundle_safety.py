"""Checking a MONAI bundle config before MONAI parses it, because parsing a config can run code.

``monai.bundle.ConfigParser`` imports whatever a ``_target_`` names and ``eval``s every ``$`` expression. So only
the parts SegXAI needs (``network_def``, ``preprocessing``, ``inferer``, ``postprocessing`` and the entries they
reference with ``@``) are handed to the parser, and before that every value in them is checked:
- ``_target_``: a bare MONAI component name or a dotted name inside monai.networks, monai.transforms,
  monai.inferers or torch.nn that is a network (torch Module), Transform or Inferer class, never a function;
- ``$`` expressions: parsed, never run, and accepted only when built from constants, ``@`` references, values
  (not functions: ``torch.float32`` yes, ``os.system`` no) read from torch/numpy/monai, arithmetic, and calls of a
  short allowlist (``torch.device``, ``torch.cuda.is_available``, ``os.path.join``, ``int``/``float``/…,
  ``@ref.to(...)``);
- other strings that name a Python object outside monai/torch/numpy (``subprocess.Popen`` as a reader), ``%``
  macros (they read other files) and ``_requires_`` are refused.
``trust_model=True`` (or ``SEGXAI_TRUST_MODEL=1``) skips the check: the pruned config and the bundle's ``imports``
are then evaluated as MONAI would evaluate them.
"""
from __future__ import annotations

import ast
import re
from typing import Iterable

from ...errors import SegXAIError

#: the packages a ``_target_`` may come from
TARGET_PACKAGES = ("monai.networks.", "monai.transforms.", "monai.inferers.", "torch.nn.")
#: names a ``$`` expression may read; their attributes too (never ones starting with ``_``)
EXPRESSION_NAMES = {"torch", "monai", "np", "numpy", "os", "True", "False", "None"}
#: callables a ``$`` expression may call
EXPRESSION_CALLS = {"torch.device", "torch.cuda.is_available", "torch.cuda.device_count", "os.path.join",
                    "int", "float", "str", "bool", "list", "tuple", "len", "min", "max", "round", "abs"}
#: methods a ``$`` expression may call on an ``@`` reference (``$@network_def.to(@device)``)
REFERENCE_METHODS = {"to", "eval", "cpu", "float"}
_REF = re.compile(r"@[\w#:]+")
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")
_SAFE_DOTTED_ROOTS = ("monai", "torch", "numpy", "np")
#: builtins that a MONAI component could be handed as a name (``reader="eval"`` is looked up with ``locate``)
_BUILTIN_NAMES = {"eval", "exec", "compile", "open", "__import__", "breakpoint", "input", "getattr", "setattr",
                  "delattr", "globals", "locals", "vars", "exit", "quit", "help"}
#: ``_mode_`` values that only change how a component is made (``debug`` would start pdb)
_MODES = ("default", "callable", "partial")
#: the ids SegXAI builds from a bundle
WANTED = ("network_def", "preprocessing", "inferer", "postprocessing")
_ALLOWED_NODES = (ast.Expression, ast.Constant, ast.Name, ast.Load, ast.Attribute, ast.Call, ast.keyword, ast.BinOp,
                  ast.UnaryOp, ast.BoolOp, ast.Compare, ast.IfExp, ast.List, ast.Tuple, ast.Dict, ast.Subscript,
                  ast.Slice, ast.operator, ast.unaryop, ast.boolop, ast.cmpop)


def refuse(key: str, value, why: str) -> SegXAIError:
    shown = repr(value) if len(repr(value)) <= 120 else repr(value)[:117] + "...'"
    return SegXAIError(f"refused to load this MONAI bundle: {key} = {shown} {why}; SegXAI does not run code from a "
                       "model's config (only for a bundle you trust: set SEGXAI_TRUST_MODEL=1, or trust_model=True "
                       "in Python)")


def _dotted(node) -> str:
    """'torch.cuda.is_available' for an attribute chain on a name, '' for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id] + parts[::-1])
    return ""


def _harmless_value(name: str) -> bool:
    """Whether reading ``name`` (an attribute chain on torch/numpy/monai) gives a plain value: no callable except
    dtypes (``torch.float32``, ``numpy.uint8``), so no function can be handed to a component (``func=$os.system``)."""
    import importlib
    import types

    import numpy as np
    import torch

    parts = name.split(".")
    root = {"np": "numpy"}.get(parts[0], parts[0])
    if root not in ("torch", "numpy", "monai"):
        return False
    obj = importlib.import_module(root)
    for part in parts[1:]:
        obj = getattr(obj, part, None)
        if obj is None:
            return False
    if isinstance(obj, types.ModuleType):
        return False
    return (not callable(obj) or isinstance(obj, torch.dtype)
            or (isinstance(obj, type) and issubclass(obj, np.generic)))


def check_expression(key: str, value: str) -> None:
    """Refuse a ``$`` expression unless it is in the harmless subset described in the module docstring."""
    body = value[1:]
    if re.match(r"\s*(import|from)\b", body):
        raise refuse(key, value, "imports a module")
    try:
        tree = ast.parse(_REF.sub("_ref_", body).strip(), mode="eval")
    except SyntaxError:
        raise refuse(key, value, "is not a Python expression SegXAI can check") from None
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            raise refuse(key, value, f"uses {type(node).__name__}, which SegXAI does not evaluate from a config")
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            raise refuse(key, value, f"reads the private attribute {node.attr!r}")
        if isinstance(node, ast.Name) and node.id not in EXPRESSION_NAMES | EXPRESSION_CALLS | {"_ref_"}:
            raise refuse(key, value, f"uses the name {node.id!r}")
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            on_reference = (isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name)
                            and node.func.value.id == "_ref_" and node.func.attr in REFERENCE_METHODS)
            if name not in EXPRESSION_CALLS and not on_reference:
                raise refuse(key, value, f"calls {name or 'an expression'}, which is not on SegXAI's list of "
                                         "harmless calls")
            continue
        parent = parents.get(node)
        if isinstance(parent, ast.Attribute) or (isinstance(parent, ast.Call) and parent.func is node):
            continue  # part of a longer chain, or the callee checked above
        name = _dotted(node) if isinstance(node, (ast.Attribute, ast.Name)) else ""
        if name and name.split(".")[0] != "_ref_" and name not in ("True", "False", "None"):
            if not _harmless_value(name):
                raise refuse(key, value, f"hands over {name}, which is a module or a function, not a value")


def target_module(key: str, target) -> str:
    """The module a ``_target_`` resolves to, checked to lie in `TARGET_PACKAGES`; nothing is imported before."""
    if not isinstance(target, str) or not target:
        raise refuse(key, target, "is not a class name")
    if target.startswith(("$", "@", "%")):
        raise refuse(key, target, "is computed, not named")
    if "." in target:
        if not _DOTTED.match(target) or not target.startswith(TARGET_PACKAGES):
            raise refuse(key, target, f"is outside {', '.join(p.rstrip('.') for p in TARGET_PACKAGES)}")
        module, name = target.rsplit(".", 1)
    else:
        from monai.bundle.config_item import ComponentLocator

        module, name = ComponentLocator().get_component_module_name(target), target
        if isinstance(module, list):  # MONAI warns and uses the first when a name is found in several modules
            module = module[0] if module else None
        if not module or not (module + ".").startswith(TARGET_PACKAGES):
            found = module or "not found in MONAI"
            raise refuse(key, target, f"is not a MONAI network, transform or inferer ({found})")
    if not _is_component_class(module, name):
        raise refuse(key, target, "is not a network, transform or inferer class (functions such as save_state are "
                                  "not made from a config)")
    return module


def _is_component_class(module: str, name: str) -> bool:
    """Whether ``module.name`` (inside `TARGET_PACKAGES`, so importing it runs only MONAI's or torch's code) is a
    torch Module, a MONAI Transform or a MONAI Inferer class."""
    import importlib

    import torch
    from monai.inferers import Inferer
    from monai.transforms import Transform

    try:
        obj = getattr(importlib.import_module(module), name, None)
    except ImportError:
        return False
    return isinstance(obj, type) and issubclass(obj, (torch.nn.Module, Transform, Inferer))


#: constructor arguments that make a MONAI network fetch or read weights at build time (pretrained=True,
#: pretrained_url=…, pretrained_path=…): refused, since SegXAI reads weights only from the bundle's model.pt
_FETCHES = re.compile(r"^(pretrained\w*|\w*_url|\w*(checkpoint|weights?)_path|load_from)$", re.IGNORECASE)


def check_value(key: str, value) -> None:
    """Check one config value (recursively) as the module docstring says."""
    if isinstance(value, dict):
        for k, v in value.items():
            sub = f"{key}#{k}"
            if k == "_target_":
                target_module(sub, v)
            elif k == "_requires_":
                raise refuse(sub, v, "asks to run other entries first")
            elif k == "_mode_" and v not in _MODES:
                raise refuse(sub, v, f"is not one of {', '.join(_MODES)}")
            elif k == "reader" and isinstance(v, str) and not v.startswith(("$", "@")):
                check_reader(sub, v)
            elif _FETCHES.match(str(k)) and v not in (None, False, "", 0):
                raise refuse(sub, v, "asks the network or transform to fetch or read weights from elsewhere "
                             "(a download or another file) when it is built")
            else:
                check_value(sub, v)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_value(f"{key}#{i}", v)
    elif isinstance(value, str):
        if value.startswith("$"):
            check_expression(key, value)
        elif value.startswith("%"):
            raise refuse(key, value, "is a macro that reads another config (inline it)")
        elif _DOTTED.match(value) and value.split(".")[0] not in _SAFE_DOTTED_ROOTS:
            raise refuse(key, value, "names a Python object outside monai, torch and numpy")
        elif value in _BUILTIN_NAMES:
            raise refuse(key, value, "names a Python built-in that runs code")


def check_reader(key: str, name: str) -> None:
    """A LoadImage reader named by a string must be one of monai.data's readers (else MONAI would ``locate`` it)."""
    import monai.data

    if not re.match(r"^\w+$", name) or not isinstance(getattr(monai.data, name, None), type):
        raise refuse(key, name, "is not an image reader of monai.data (NibabelReader, ITKReader, …)")


def references(value) -> set:
    """The top-level ids that ``value`` refers to with ``@id`` (``@a#b`` refers to ``a``)."""
    found = set()
    if isinstance(value, dict):
        for v in value.values():
            found |= references(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            found |= references(v)
    elif isinstance(value, str):
        for ref in _REF.findall(value):
            top = re.split(r"#|::", ref[1:])[0]
            if top:
                found.add(top)
    return found


def pruned_config(config: dict, wanted: Iterable[str] = WANTED, trust_model: bool = False) -> dict:
    """The entries of ``config`` that ``wanted`` needs (they and everything they reference), checked unless trusted.

    Only this pruned config is ever given to ConfigParser, so the rest of the file (``run``, ``imports``,
    ``initialize``, data lists …) is never evaluated.
    """
    if not isinstance(config, dict):
        raise SegXAIError("the bundle's inference config is not a mapping of ids to entries; is it a MONAI bundle?")
    keep, todo = {}, list(wanted)
    while todo:
        key = todo.pop()
        if key in keep:
            continue
        if key not in config:
            if key in wanted:
                raise SegXAIError(f"the bundle's inference config has no {key!r}; SegXAI needs "
                                  f"{', '.join(WANTED)} to run a bundle as MONAI does")
            raise SegXAIError(f"the bundle's inference config refers to @{key}, which it does not define")
        keep[key] = config[key]
        todo.extend(references(config[key]) - set(keep))
    if trust_model:
        if "imports" in config:
            keep["imports"] = config["imports"]  # trusted expressions may use the modules the bundle imports
    else:
        for key, value in keep.items():
            check_value(key, value)
    return keep
