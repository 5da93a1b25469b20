"""``steerkit serve``: an OpenAI-compatible API where every request picks its own steering.

Steering is chosen per request, two ways any client can use:

* the model name: ``smollm2-135m`` (unsteered), ``smollm2-135m+dog``, ``smollm2-135m+dog@0.5+no-music``
  (``@`` sets one profile's strength), so a client that only lets a user pick a model still works;
* an extension object in the body: ``"steerkit": {"profiles": ["dog", {"name": "no-music",
  "strength": 0.5}], "strength": 1.0, "enabled": true}`` (it replaces what the model name says).

Every request runs through the same :class:`~steerkit.runtimes.base.Backend` call as ``steerkit
generate``, from an empty KV cache, so nothing leaks between requests and a steered answer is the one
``generate`` gives.  One request computes at a time (llama.cpp's threads busy-wait: two contexts on
these cores each run several times slower); the others wait in a bounded queue, and a full queue
answers 429.  Profile names are looked up in the store, never joined into paths.
"""

from steerkit.serving.app import ServerState, create_app, serve

__all__ = ["ServerState", "create_app", "serve"]
