"""Prompt templates (core/prompts/templates.py): declared variables are checked at creation, rendering names
what is missing, and the gateway's own parser reads and renders templates exactly as LangChain's f-string
PromptTemplate does (the gateway may not import LangChain, the worker's chains use it)."""
from __future__ import annotations

import pytest
from langchain_core.prompts import PromptTemplate

from cortex_tasks.core.prompts.service import PromptError, parse_reference
from cortex_tasks.core.prompts.templates import TemplateError, check_template, fields_of, render

AGREEING = [
    "You answer for {team}.",
    "Hello {name}, you are {age} years old. {name} again.",
    "Literal braces {{like this}} and a {value}.",
    "No variables at all.",
    "JSON example: {{\"key\": \"{value}\"}}",
]


@pytest.mark.parametrize("template", AGREEING)
def test_fields_and_rendering_agree_with_langchain(template):
    langchain = PromptTemplate.from_template(template)
    assert sorted(fields_of(template)) == sorted(langchain.input_variables)
    values = {name: f"<{name}>" for name in langchain.input_variables}
    assert render(template, list(values), values, "p@1") == langchain.format(**values)


def test_a_template_that_uses_an_undeclared_variable_is_refused_naming_it():
    with pytest.raises(TemplateError) as refused:
        check_template("Hi {name}, about {topic} and {tone}.", ["name"])
    assert refused.value.code == "undeclared_variables" and refused.value.status == 422
    assert refused.value.details["undeclared"] == ["tone", "topic"]


@pytest.mark.parametrize("template, code", [
    ("Unbalanced { brace", "invalid_template"),
    ("Attribute {user.name}", "invalid_template"),
    ("Index {items[0]}", "invalid_template"),
    ("Positional {0}", "invalid_template"),
    ("Empty {}", "invalid_template"),
    ("Spec {price:>8}", "invalid_template"),
    ("Conversion {name!r}", "invalid_template"),
    ("   ", "invalid_template"),
])
def test_templates_that_cannot_be_rendered_safely_are_refused(template, code):
    with pytest.raises(TemplateError) as refused:
        check_template(template, ["price", "name", "user", "items"])
    assert refused.value.code == code


@pytest.mark.parametrize("declared, code", [(["bad name"], "invalid_variable_name"),
                                            (["a", "a"], "invalid_variable_name"),
                                            (["1st"], "invalid_variable_name")])
def test_declared_names_are_identifiers_declared_once(declared, code):
    with pytest.raises(TemplateError) as refused:
        check_template("text", declared)
    assert refused.value.code == code


def test_a_declared_but_unused_variable_is_allowed():
    assert check_template("Hi {name}.", ["name", "extra"]).input_variables == ("name", "extra")
    assert render("Hi {name}.", ["name", "extra"], {"name": "Ada", "extra": "x"}, "p@1") == "Hi Ada."


def test_rendering_names_missing_variables_and_ignores_undeclared_ones():
    with pytest.raises(TemplateError) as refused:
        render("{a} and {b}", ["a", "b"], {"a": "x", "c": "y"}, "greeting@2")
    assert refused.value.code == "missing_variables" and refused.value.details["missing"] == ["b"]
    assert "greeting@2" in refused.value.message and "b" in refused.value.message
    # A value for another version's variable is left unused.
    assert render("{a}", ["a"], {"a": "x", "z": 1}, "p@1") == "x"


def test_values_are_text_or_numbers_and_braces_in_values_stay_literal():
    assert render("n={n}", ["n"], {"n": 3}, "p@1") == "n=3"
    assert render("v={v}", ["v"], {"v": "{not_a_field}"}, "p@1") == "v={not_a_field}"
    with pytest.raises(TemplateError):
        render("v={v}", ["v"], {"v": {"nested": 1}}, "p@1")
    with pytest.raises(TemplateError):
        render("v={v}", ["v"], {"v": True}, "p@1")


@pytest.mark.parametrize("reference, expected", [("support", ("support", None)), ("support@3", ("support", 3)),
                                                 ("a.b-c_d@12", ("a.b-c_d", 12))])
def test_references(reference, expected):
    assert parse_reference(reference) == expected


@pytest.mark.parametrize("reference", ["support@", "support@0", "support@x", "@3", "../etc", "a b", 5,
                                       "support@99999999999"])
def test_bad_references_are_refused(reference):
    with pytest.raises(PromptError):
        parse_reference(reference)
