"""External decision points (AuthZEN PDPs) and metadata lookups: docs/authzen.md."""
