"""kit.table: the one formatter behind the CLIs' text tables and the Markdown tables."""

from __future__ import annotations

import pytest

from kit.table import markdown_table, text_table


def test_text_table_pads_aligns_and_strips_trailing_spaces():
    text = text_table(["name", "n", "note"], [["a", 1234, ""], ["long name", 5, "x"]], align="lr")
    assert text.splitlines() == [
        "name          n  note",
        "a          1234",
        "long name     5  x",
    ]


def test_text_table_rule_spans_the_header():
    assert text_table(["GPU", "memory"], [[0, "1 MiB"]], rule=True).splitlines()[1] == "-" * len("GPU  memory")


def test_markdown_table_escapes_pipes_inside_cells():
    assert markdown_table(["a", "b"], [["x | y", 2]]) == "| a | b |\n| --- | --- |\n| x \\| y | 2 |"


@pytest.mark.parametrize("fmt", [text_table, markdown_table])
def test_a_row_with_the_wrong_width_is_an_error(fmt):
    with pytest.raises(ValueError, match="every row needs 2 cells"):
        fmt(["a", "b"], [["only one"]])
