"""Write the settings reference in ``docs/configuration.md`` from the pydantic schema.

The tables between the BEGIN/END markers are generated from ``bastion.config.schema``
(via ``bastion.config.introspect``); ``--check`` exits 1 when the file is out of date.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

from bastion.config.introspect import SettingInfo, iter_settings
from bastion.config.schema import Settings

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
BEGIN = "<!-- BEGIN GENERATED: scripts/gen_config_docs.py -->"
END = "<!-- END GENERATED -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default(info: SettingInfo) -> str:
    if info.default in ("unset", "required"):
        return f"*{info.default}*"
    return f"`{_cell(info.default)}`"


def _table_description(table: str) -> str:
    field = Settings.model_fields.get(table.strip("[]"))
    return (field.description or "") if field is not None else ""


def render_reference() -> str:
    """The generated part: one Markdown table per TOML table, in schema order."""
    out: list[str] = []
    for table, group in itertools.groupby(iter_settings(), key=lambda s: s.table):
        settings: list[SettingInfo] = list(group)
        out += [f"### `{table}`", ""]
        if description := _table_description(table):
            out += [description, ""]
        out += ["| Key | Type | Default | Meaning |", "|---|---|---|---|"]
        for info in settings:
            out.append(
                f"| `{info.key}` | {_cell(info.expected)} | {_default(info)} "
                f"| {_cell(info.description)} |"
            )
        out.append("")
    return "\n".join(out)


def update(document: str) -> str:
    """``document`` with the text between the markers replaced by a fresh reference."""
    head, begin, rest = document.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"markers {BEGIN!r} and {END!r} not found")
    return f"{head}{BEGIN}\n\n{render_reference()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the file is stale")
    parser.add_argument("--path", type=Path, default=DOC, help="the Markdown file to update")
    args = parser.parse_args(argv)
    path: Path = args.path
    current = path.read_text(encoding="utf-8")
    fresh = update(current)
    if args.check:
        if fresh != current:
            print(f"{path} is out of date: run python scripts/gen_config_docs.py", file=sys.stderr)
            return 1
        return 0
    if fresh != current:
        path.write_text(fresh, encoding="utf-8")
        print(f"updated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
