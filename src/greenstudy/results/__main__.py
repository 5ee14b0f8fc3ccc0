"""`python -m greenstudy.results`: regenerate the published results/ folder (see greenstudy.results.build)."""

import sys

from greenstudy.results.build import main

sys.exit(main())
