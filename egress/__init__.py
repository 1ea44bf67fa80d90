"""Outbound connections: direct or through SOCKS/HTTP egress proxies. Knows nothing about LLMs."""
