"""python3 -m xend_rest"""
from xend_rest.cli import main

raise SystemExit(main())
