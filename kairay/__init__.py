"""kairay: Kaito Workspaces served and tuned on Ray."""

__version__ = "0.1.0"
