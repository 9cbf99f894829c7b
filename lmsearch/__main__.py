import sys

from lmsearch.cli import main

sys.exit(main())
