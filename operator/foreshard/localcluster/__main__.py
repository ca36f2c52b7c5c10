"""`python -m foreshard.localcluster build`: build (or find cached) the Go-built binaries."""

from __future__ import annotations

import sys

from foreshard.localcluster.toolchain import Toolchain, ToolchainError


def main(argv: list[str]) -> int:
    if argv != ["build"]:
        print("usage: python -m foreshard.localcluster build", file=sys.stderr)
        return 2
    chain = Toolchain.default()
    try:
        took = chain.ensure()
    except ToolchainError as error:
        print(f"bootstrap: {error}", file=sys.stderr)
        return 1
    built = ", ".join(f"{name} {seconds:.0f}s" for name, seconds in took.items())
    print(f"bootstrap: control-plane binaries {'built: ' + built if took else 'cached'} in {chain.bin_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
