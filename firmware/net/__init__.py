"""Non-blocking network clients on asyncio streams: conn (TCP/TLS), http, mqtt, ws."""
