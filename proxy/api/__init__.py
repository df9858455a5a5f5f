"""The REST API (Smithery Connect wire shapes)."""
