"""The HTTP API (FastAPI), served by Lambda through Mangum or locally by uvicorn."""
