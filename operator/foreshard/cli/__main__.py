import sys

from foreshard.cli import main

sys.exit(main())
