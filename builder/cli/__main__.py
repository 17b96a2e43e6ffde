import sys

from tritonfleet.builder.cli import main

sys.exit(main())
