"""Every setting is documented by the docstring under its field (read from the source, as
pydantic's ``use_attribute_docstrings`` would, which the services leave off: it re-parses the
module at every start-up, ~18 ms of the gateway's import)."""

from __future__ import annotations

import ast
import inspect
import textwrap
from itertools import pairwise


def undocumented_fields(cls: type) -> list[str]:
    """The fields of the pydantic model ``cls`` with no docstring right under them."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    [class_def] = [node for node in tree.body if isinstance(node, ast.ClassDef)]
    documented = set()
    body = class_def.body
    for statement, following in pairwise(body):
        if (
            isinstance(statement, ast.AnnAssign)
            and isinstance(statement.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
            and following.value.value.strip()
        ):
            documented.add(statement.target.id)
    return [name for name in cls.model_fields if name not in documented]  # type: ignore[attr-defined]
