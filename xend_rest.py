#!/usr/bin/env python3
"""Run xend-rest from a checkout: python3 xend_rest.py --demo"""
from xend_rest.cli import main; raise SystemExit(main())  # noqa: E702
