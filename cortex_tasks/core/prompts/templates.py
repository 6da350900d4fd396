"""What a prompt template is: text in the grammar of LangChain's f-string `PromptTemplate` (Python's
`str.format` fields: `{name}`, and `{{`/`}}` for literal braces), with the input variables it declares.

The gateway may not import LangChain (the import contracts keep machine-learning libraries out of it), so
the fields are read here with `string.Formatter`, the parser LangChain's f-string templates use themselves;
a unit test (tests/unit/test_prompt_templates.py) checks that both read and render the same. Only the
f-string format is offered: jinja2 templates can run code, and mustache renders a missing variable as
nothing.
"""
from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Any

from cortex_tasks.core.errors import CortexError

VARIABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_TEMPLATE_CHARS = 20_000
MAX_VARIABLES = 50
MAX_VARIABLE_CHARS = 20_000


class TemplateError(CortexError):
    status = 422


@dataclass(frozen=True)
class CheckedTemplate:
    template: str
    input_variables: tuple[str, ...]


def fields_of(template: str) -> list[str]:
    """The names of the fields the template fills, in order of first use (ValueError: it cannot be parsed).
    Values are text, so a format spec or conversion (`{price:>8}`, `{name!r}`) has nothing to format."""
    names: list[str] = []
    for _, field, spec, conversion in string.Formatter().parse(template):
        if field is None:
            continue
        if spec or conversion:
            raise ValueError(f"field {field!r} has a format spec or conversion (write {{{field}}} alone)")
        if field not in names:
            names.append(field)
    return names


def check_template(template: str, declared: list[str]) -> CheckedTemplate:
    """The template and its declared variables, or a 422 naming what is wrong: a variable it uses that is
    not declared, a declared name that is not an identifier, or a template LangChain cannot parse."""
    if not template.strip():
        raise TemplateError("invalid_template", "The template is empty.")
    if len(template) > MAX_TEMPLATE_CHARS:
        raise TemplateError("invalid_template", f"The template is longer than {MAX_TEMPLATE_CHARS} characters.")
    bad_names = [name for name in declared if not isinstance(name, str) or not VARIABLE_NAME.match(name)]
    if bad_names:
        raise TemplateError("invalid_variable_name", "Input variables are identifiers (letters, digits, '_', "
                            "not starting with a digit).", {"invalid": bad_names[:20]})
    if len(set(declared)) != len(declared):
        raise TemplateError("invalid_variable_name", "An input variable is declared twice.",
                            {"duplicates": sorted({name for name in declared if declared.count(name) > 1})})
    if len(declared) > MAX_VARIABLES:
        raise TemplateError("invalid_variable_name", f"At most {MAX_VARIABLES} input variables.")
    try:
        used = fields_of(template)
    except ValueError as exc:
        raise TemplateError("invalid_template", f"The template cannot be parsed: {exc}. Write variables as "
                            "{name} and literal braces as {{ and }}.") from None
    # `{a.b}` or `{a[0]}` reach into an object: a template renders plain text values only.
    structured = [name for name in used if not VARIABLE_NAME.match(name)]
    if structured:
        raise TemplateError("invalid_template", "Template fields are plain variable names ({name}); attribute "
                            "and index access are not allowed.", {"fields": structured[:20]})
    undeclared = sorted(set(used) - set(declared))
    if undeclared:
        raise TemplateError("undeclared_variables", f"The template uses variables it does not declare: "
                            f"{', '.join(undeclared)}. Add them to input_variables.",
                            {"undeclared": undeclared, "declared": list(declared)})
    return CheckedTemplate(template, tuple(declared))


def render(template: str, declared: list[str], values: dict[str, Any], reference: str) -> str:
    """The template with `values` filled in; a 422 names every declared variable that is missing. Values
    are text (numbers are written as they read). A value for a variable this version does not declare is
    left unused: a caller of `name` (whatever version is in production) may send the variables of
    several versions."""
    missing = sorted(name for name in declared if name not in values)
    if missing:
        raise TemplateError("missing_variables", f"Prompt {reference} cannot be rendered: missing "
                            f"{', '.join(missing)}.", {"prompt": reference, "missing": missing,
                                                        "declared": list(declared)})
    texts: dict[str, str] = {}
    for name in declared:
        value = values[name]
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise TemplateError("invalid_variable_value", f"Variable {name!r} must be a string or a number.",
                                {"variable": name})
        text = str(value)
        if len(text) > MAX_VARIABLE_CHARS:
            raise TemplateError("invalid_variable_value", f"Variable {name!r} is longer than "
                                f"{MAX_VARIABLE_CHARS} characters.", {"variable": name})
        texts[name] = text
    return template.format(**{name: texts[name] for name in fields_of(template)})
