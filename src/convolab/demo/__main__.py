import sys

from ..cli import main

# through the CLI, so a missing optional package is a one-line message, not a traceback
sys.exit(main(["demo", *sys.argv[1:]]))
