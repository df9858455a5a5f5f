"""Real upstream MCP servers for the gateway's tests (see `server.py`)."""
