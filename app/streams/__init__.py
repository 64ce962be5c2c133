"""The real-time stream: SSE endpoint, per-process hub, framing, tickets, limits."""
