"""The copy engine: march (decide per folder), workers (copy), verify (check-only)."""
