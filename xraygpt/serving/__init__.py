"""The OpenAI-compatible server (`serve.py`): settings (`settings`, no web framework imported), the
request and answer shapes (`protocol`), images from `image_url`s (`image_urls`), dynamic batching
(`batcher`) and the FastAPI routes (`app`)."""
