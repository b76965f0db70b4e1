"""The ML core: pure functions over arrays. Nothing here knows about Redis, HTTP or terminals."""
