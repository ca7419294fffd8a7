"""Great Expectations suites (suites.py), what they validate (frames.py) and the gate that runs them (gate.py)."""

import logging

# GX logs hundreds of INFO lines while it is imported (its docs decorators): quiet it before any module here imports it
logging.getLogger("great_expectations").setLevel(logging.WARNING)
