"""The metric names a PromQL expression reads, and Grafana's variables and macros filled in, for the dashboard tests.

    metric_names('sum by (le) (rate(x_bucket{job=~"$job"}[$__rate_interval])) / y') == {"x_bucket", "y"}
    fill('rate(x{job=~"$job"}[$__rate_interval])', {"job": "a|b"}, MACROS) == 'rate(x{job=~"a|b"}[1m])'

A small tokenizer, not a parser: it skips strings, label matchers (`{...}`), range and subquery brackets
(`[...]`), the label lists of `by`/`without`/`on`/`ignoring`/`group_left`/`group_right`, numbers and durations,
and takes every other identifier that is not a function or aggregation (followed by `(`, or an aggregation
followed by `by`/`without`), a keyword or an operator word. `{__name__="x"}` counts as `x`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_NUMBER = re.compile(r"(?:0x[0-9a-fA-F]+|[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?(?:ms|[smhdwy])?)+")
_NAME_MATCHER = re.compile(r"""__name__\s*=\s*(["'`])([a-zA-Z_:][a-zA-Z0-9_:]*)\1""")
AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
                "topk", "quantile", "limitk", "limit_ratio"}
LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
WORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "start", "end"}
# Grafana's macros with the values the tests give them (a data source scrape interval of 15 s).
MACROS = {"$__rate_interval": "1m", "$__interval": "15s", "$__interval_ms": "15000", "$__range": "5m",
          "$__range_s": "300", "$__range_ms": "300000"}
_VARIABLE = re.compile(r"\$\{([a-zA-Z_][a-zA-Z0-9_]*)(?::[a-z]+)?\}|\$([a-zA-Z_][a-zA-Z0-9_]*)")


def metric_names(expr: str) -> set[str]:
    names: set[str] = set()
    i, n = 0, len(expr)
    while i < n:
        c = expr[i]
        if c in "\"'`":
            i = _skip_string(expr, i)
        elif c == "{":
            end = _closing(expr, i, "{", "}")
            names.update(m.group(2) for m in _NAME_MATCHER.finditer(expr, i, end))
            i = end + 1
        elif c == "[":
            i = _closing(expr, i, "[", "]") + 1
        elif c == "#":
            end = expr.find("\n", i)
            i = n if end < 0 else end
        elif c == "$":  # a Grafana variable or macro outside a string: not a metric
            match = _VARIABLE.match(expr, i) or re.compile(r"\$__\w+").match(expr, i)
            i = match.end() if match else i + 1
        elif c.isdigit() or (c == "." and i + 1 < n and expr[i + 1].isdigit()):
            match = _NUMBER.match(expr, i)
            i = match.end() if match else i + 1
        elif _IDENT.match(expr, i):
            match = _IDENT.match(expr, i)
            assert match is not None
            word, i = match.group(0), match.end()
            following = _next_char(expr, i)
            if word.lower() in LABEL_LIST_KEYWORDS:
                j = _skip_space(expr, i)
                if j < n and expr[j] == "(":
                    i = _closing(expr, j, "(", ")") + 1
            elif following == "(" or word.lower() in WORDS:
                continue
            elif word in AGGREGATIONS and _next_word(expr, i) in ("by", "without"):
                continue
            else:
                names.add(word)
        else:
            i += 1
    return names


def fill(expr: str, variables: Mapping[str, str], macros: Mapping[str, str] = MACROS) -> str:
    """`expr` with `$__...` macros and `$name` / `${name}` variables replaced; KeyError for an unknown one."""
    for macro in sorted(macros, key=len, reverse=True):  # $__range_s before $__range
        expr = expr.replace(macro, macros[macro])
    leftover = re.search(r"\$__\w+", expr)
    if leftover:
        raise KeyError(f"unknown Grafana macro {leftover.group(0)} in {expr!r}")
    return _VARIABLE.sub(lambda m: variables[m.group(1) or m.group(2)], expr)


def _skip_string(expr: str, i: int) -> int:
    quote, i = expr[i], i + 1
    while i < len(expr) and expr[i] != quote:
        i += 2 if expr[i] == "\\" and quote != "`" else 1
    return i + 1


def _closing(expr: str, i: int, opening: str, closing: str) -> int:
    """Index of the bracket closing the one at `i` (strings inside skipped); ValueError if there is none."""
    depth, j = 0, i
    while j < len(expr):
        c = expr[j]
        if c in "\"'`":
            j = _skip_string(expr, j)
            continue
        if c == opening:
            depth += 1
        elif c == closing:
            depth -= 1
            if depth == 0:
                return j
        j += 1
    raise ValueError(f"unbalanced {opening!r} at {i} in {expr!r}")


def _skip_space(expr: str, i: int) -> int:
    while i < len(expr) and expr[i].isspace():
        i += 1
    return i


def _next_char(expr: str, i: int) -> str:
    j = _skip_space(expr, i)
    return expr[j] if j < len(expr) else ""


def _next_word(expr: str, i: int) -> str:
    match = _IDENT.match(expr, _skip_space(expr, i))
    return match.group(0).lower() if match else ""
