"""What a PromQL expression reads: the metric and recording rule names in it.

Good enough for the expressions in our own rules and dashboards (not a full parser):
strings, label matchers, ranges and label lists are dropped, then every identifier left
that is not a function call or a keyword is a series name.
"""

from __future__ import annotations

import re

KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "offset", "bool",
            "group_left", "group_right"}


def series_names(expr: str) -> set[str]:
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w$.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if not call and name not in KEYWORDS:
            names.add(name)
    return names


def exposed_names(catalog) -> set[str]:
    """Series names the exporter can expose: histograms as their three series."""
    names = set()
    for metric in catalog.values():
        if metric.kind == "histogram":
            names |= {f"{metric.name}_bucket", f"{metric.name}_sum", f"{metric.name}_count"}
        else:
            names.add(metric.name)
    return names
