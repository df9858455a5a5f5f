"""The namespace MCP endpoint and the per-connection passthrough."""
