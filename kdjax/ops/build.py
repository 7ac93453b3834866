"""``python -m kdjax.ops.build [--force]``: compiles the optional oneDNN convolution into the
cache and checks that it loads; exits 1 with the reason when it cannot."""

import argparse
import sys

from kdjax.ops._build import OnednnUnavailableError, build, load


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m kdjax.ops.build", description=__doc__)
  parser.add_argument("--force", action="store_true", help="rebuild even if cached")
  args = parser.parse_args(argv)
  try:
    path = build(force=args.force, verbose=True)
    load()
  except OnednnUnavailableError as err:
    print(f"kdjax.ops.build: {err}", file=sys.stderr)
    return 1
  print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
