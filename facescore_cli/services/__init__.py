"""The two ML HTTP services (detection, embedding) and the client the fallback chain uses.

`detection.create_app()` and `embedding.create_app()` are FastAPI app factories (uvicorn runs
them by import string, so `--workers N` works); `client.RemoteBackend` is the chain's remote
link. Nothing is imported here, so importing the client does not pull in FastAPI.
"""
