"""Read the values of an official cosyvoice3.yaml without executing any of its tags.

hyperpyyaml tags (`!new:`, `!name:`, `!apply:`, `!ref`) are read as plain data: a `!new:`/`!name:`
mapping becomes a dict with its keyword arguments plus `_tag`, `!ref <a> * <b>` is resolved against
top-level scalars (simple arithmetic only), and `!apply:` entries are dropped.
"""
from __future__ import annotations

import ast
import operator
import re
from pathlib import Path
from typing import Any

import yaml

_REF = re.compile(r"<([A-Za-z_][A-Za-z0-9_.]*)>")


class _Ref(str):
    pass


class _Loader(yaml.SafeLoader):
    pass


def _tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    tag = node.tag
    if tag.startswith("!apply"):
        return _Dropped()
    if tag == "!ref":
        if not isinstance(node, yaml.ScalarNode):
            raise yaml.constructor.ConstructorError(None, None, "!ref takes a name", node.start_mark)
        return _Ref(loader.construct_scalar(node))
    if isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
        value = dict(value)
        value["_tag"] = tag
        return value
    if isinstance(node, yaml.SequenceNode):
        return {"_tag": tag, "_args": loader.construct_sequence(node, deep=True)}
    assert isinstance(node, yaml.ScalarNode)         # the one kind of node left
    return {"_tag": tag, "_value": loader.construct_scalar(node)}


class _Dropped:
    pass


_Loader.add_multi_constructor("!", _tagged)

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv}


def _arith(expr: str) -> Any:
    def walk(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        raise ValueError(f"unsupported expression in !ref: {expr!r}")
    return walk(ast.parse(expr, mode="eval"))


def _resolve(value: Any, top: dict[str, Any]) -> Any:
    if isinstance(value, _Ref):
        whole = _REF.fullmatch(value.strip())
        if whole:                        # a plain reference keeps the referred value's type
            return _resolve(top[whole.group(1)], top)
        expr = _REF.sub(lambda m: repr(_resolve(top[m.group(1)], top)), value)
        return _arith(expr)
    if isinstance(value, dict):
        return {k: _resolve(v, top) for k, v in value.items() if not isinstance(v, _Dropped)}
    if isinstance(value, list):
        return [_resolve(v, top) for v in value]
    return value


def load_yaml_values(path: str | Path) -> dict[str, Any]:
    """Plain nested dicts/lists/scalars of the yaml; raises ValueError with the file name on failure."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"{path.name}: cannot be read as yaml ({err})") from err
    if not isinstance(raw, dict):
        raise ValueError(f"{path.name}: expected a mapping at the top level")
    raw = {k: v for k, v in raw.items() if not isinstance(v, _Dropped)}
    return _resolve(raw, raw)
