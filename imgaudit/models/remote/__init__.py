"""Remote models, for teams that already pay for cloud models. Off by default; the user configures every
endpoint URL (nothing here knows a provider's host).

- ``client``: the one careful HTTP client every provider shares (deadlines, retries, rate limit,
  concurrency bound, usage counters, key handling);
- ``rate_limit`` and ``usage``: its client-side rate limit and its cost counters;
- ``openai_chat``: ``RemoteCaptioner``, image descriptions from an OpenAI-compatible vision chat endpoint;
- ``dashscope_embedding``: ``RemoteEmbedder``, image and text embeddings from a DashScope-style
  multimodal embedding endpoint, usable wherever a ``ClipEncoder`` is.
"""
