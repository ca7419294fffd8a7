"""ltvrec: raw customer events -> top-N recommendations and lifetime-value estimates in a warehouse."""

__version__ = "0.1.0"
