import sys

from lowlevel.bench import main

sys.exit(main())
