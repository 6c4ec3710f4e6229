"""The HTTP edge: the FastAPI app, the OpenAI-compatible /v1 routes and the guards in front of them."""
