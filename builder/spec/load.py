"""Reading a spec: YAML (with ``extends:``), validation, and errors that name their place.

:func:`load_spec` turns a YAML file into a frozen :class:`PipelineSpec` or raises one
:class:`SpecError` listing every problem with its path in the file
(``members[1] (cnn_b).model.checkpoint``) and, for unknown keys, a did-you-mean hint.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from tritonfleet.builder.errors import SpecError
from tritonfleet.builder.spec.pipeline import PipelineSpec


def load_spec(path: str | Path) -> PipelineSpec:
    """Read, parse and validate a spec file; raise :class:`SpecError` on any problem.

    ``extends: base.yaml`` (a file in the same folder) starts from that spec: mappings are
    merged key by key, everything else (lists included) is replaced, and a mapping with a
    different ``type`` (another fusion) replaces the base's.
    """
    path = Path(path)
    raw = _read_yaml(path, chain=())
    return parse_spec(raw, base_dir=path.parent.resolve(), source=str(path))


def _read_yaml(path: Path, chain: tuple[Path, ...]) -> Any:
    if not path.is_file():
        fix = ("check the extends: name (a file in the folder of the spec that extends it)" if chain else
               "check the path (a relative path is resolved against the current folder)")
        raise SpecError(f"spec file not found: {path}" + (f" (extended by {chain[-1]})" if chain else "") + f"; {fix}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{path}: malformed YAML{where}: {problem}; fix the YAML there (indentation, "
                        "brackets, quotes)") from None
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not a UTF-8 text file") from None
    if not isinstance(raw, dict) or "extends" not in raw:
        return raw
    base_name = raw.pop("extends")
    base = path.parent / str(base_name)
    if not isinstance(base_name, str) or Path(base_name).name != base_name:
        raise SpecError(f"{path}: extends: '{base_name}' must name a spec file in the same folder")
    if base.resolve() in {p.resolve() for p in (*chain, path)}:
        raise SpecError(f"{path}: extends: '{base_name}' makes a cycle; a spec cannot extend itself, directly or "
                        "through the specs it extends: remove one of the extends")
    return _merge(_read_yaml(base, (*chain, path)), raw)


def _merge(base: Any, update: Any) -> Any:
    """Deep-merge mappings; a mapping whose ``type`` changes (a fusion) replaces the base."""
    if isinstance(base, dict) and isinstance(update, dict) and base.get("type", update.get("type")) == update.get(
            "type", base.get("type")):
        out = dict(base)
        for key, value in update.items():
            out[key] = _merge(base[key], value) if key in base else value
        return out
    return update


def with_overrides(spec: PipelineSpec, changes: dict[str, Any], source: str = "command line") -> PipelineSpec:
    """A copy of ``spec`` with nested ``changes`` applied, validated again."""

    raw = _merge(spec.model_dump(mode="json", exclude_unset=True), changes)
    return parse_spec(raw, base_dir=spec.source_dir or Path("/"), source=source)


def parse_spec(raw: Any, base_dir: Path, source: str = "<spec>") -> PipelineSpec:
    if not isinstance(raw, dict):
        raise SpecError(
            f"{source}: the spec must be a YAML mapping with keys such as 'name', "
            f"'members' and 'fusion' (got {type(raw).__name__})"
        )
    try:
        spec = PipelineSpec.model_validate(raw, context={"base_dir": base_dir})
    except PydanticValidationError as exc:
        lines = [_format_error(err, raw) for err in exc.errors()]
        raise SpecError(f"{source}: invalid spec\n" + "\n".join(f"  - {ln}" for ln in lines)) from None
    spec._source_dir = Path(base_dir).resolve()
    return spec


def _format_error(err: dict, raw: Any) -> str:
    loc = _format_loc(err["loc"], raw)
    kind = err["type"]
    msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind == "missing":
        msg = "required field is missing"
    elif kind == "extra_forbidden":
        key = str(err["loc"][-1])
        allowed = sorted(_model_at(err["loc"][:-1], raw).model_fields)
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        msg = f"unknown field; {hint}allowed fields here: {', '.join(allowed)}"
    elif kind == "union_tag_invalid":
        ctx = err.get("ctx", {})
        msg = f"unknown type '{ctx.get('tag')}'; choose one of: {ctx.get('expected_tags')}"
    elif kind == "union_tag_not_found":
        msg = "missing 'type'"
    elif kind == "string_pattern_mismatch":
        msg = (
            f"'{err['input']}' is not a valid name: use letters, digits, '_' and '-' "
            "(tensor names may also use '.'), starting with a letter"
        )
    return f"{loc}: {msg}" if loc else msg


def _format_loc(loc: tuple, raw: Any) -> str:
    out = ""
    node = raw
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("name"), str):
                out += f" ({node['name']})"
        else:
            if isinstance(node, dict) and node.get("type") == part:
                continue  # the discriminator tag pydantic adds to the path of a union
            out += f".{part}" if out else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out


def _model_at(loc: tuple, raw: Any) -> type[BaseModel]:
    """The schema class that validated the mapping found at ``loc`` in the raw spec."""
    cls: type[BaseModel] = PipelineSpec
    node = raw
    for part in loc:
        if isinstance(part, int):
            node = node[part] if isinstance(node, list) and part < len(node) else None
            continue
        if part not in cls.model_fields:
            continue  # a union's discriminator tag
        node = node.get(part) if isinstance(node, dict) else None
        cls = _unwrap_model(cls.model_fields[part].annotation, node) or cls
    return cls


def _unwrap_model(annotation: Any, node: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    candidates = [c for c in map(lambda a: _unwrap_model(a, node), get_args(annotation)) if c]
    if get_origin(annotation) is Annotated:
        return candidates[0] if candidates else None
    for cand in candidates:  # a discriminated union: pick the member whose tag matches
        tag = cand.model_fields.get("type")
        if tag is None or not isinstance(node, dict) or node.get("type") in get_args(tag.annotation):
            return cand
    return candidates[0] if candidates else None
