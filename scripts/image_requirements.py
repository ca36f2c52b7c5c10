"""Print the requirement lines an image installs, taken from pyproject.toml's dependencies.

    python3 image_requirements.py pyproject.toml grpcio ...           # only these, by name
    python3 image_requirements.py pyproject.toml --without matplotlib  # all but these

The Dockerfiles run this with the base image's own Python (standard library only), so the
version ranges live in one place, pyproject.toml, and an image cannot drift from it.
"""

from __future__ import annotations

import re
import sys
import tomllib


def requirement_name(requirement: str) -> str:
    """The distribution name of a requirement line, normalised as PEP 503 says."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"cannot read a distribution name from requirement {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def select(dependencies: list[str], names: list[str]) -> list[str]:
    """The dependencies named in `names`, or all but those after `--without`.

    A name pyproject lacks is an error either way, so a renamed dependency cannot slip out.
    """
    without = names[:1] == ["--without"]
    by_name = {requirement_name(line): line for line in dependencies}
    asked = [requirement_name(name) for name in (names[1:] if without else names)]
    missing = [name for name in asked if name not in by_name]
    if missing:
        raise ValueError(f"pyproject.toml has no dependency named {', '.join(missing)}")
    if without:
        return [line for name, line in by_name.items() if name not in asked]
    return [by_name[name] for name in asked]


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0], "rb") as handle:
        dependencies = tomllib.load(handle)["project"]["dependencies"]
    try:
        lines = select(dependencies, argv[1:])
    except ValueError as error:
        print(f"image_requirements: {error}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
