"""migrator: move and archive mailboxes byte for byte, resumably."""

__version__ = "0.1.0"
