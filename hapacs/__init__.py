"""hapacs: a high-availability agent for PACS servers."""

__version__ = "0.1.0"
