import sys

from avis.cli import main

sys.exit(main())
