"""The `upstream` backend: image APIs of other services, relayed.

    router.py         picks a deployment, calls its wire format's adapter, retries or falls back
    call.py           one attempt's context and its HTTP exchanges, failures classified once
    failures.py       how an attempt failed (`UpstreamFailure`), and n calls' partial results
    sse.py            server-sent events read from an upstream's stream
    images.py         images to upstreams (PNG) and from them (base64, bytes, links: checked)
    openai_images.py  one module per wire format: the adapters
    openai_chat.py
    gemini.py         (Gemini and Imagen)
    bfl.py

Sizes become a wire format's aspect ratio and 1K/2K/4K tier by one rule, in `aspect_ratios`.
"""
