"""OCI registries: references (:mod:`.reference`), credentials (:mod:`.auth`), the HTTP client (:mod:`.client`).

The client is three layers of one object: :mod:`.client` (blob and manifest
operations) on :mod:`.transport` (TLS, retries, error text) on :mod:`.challenge`
(answering a ``401`` with Basic or a bearer token); :mod:`.errors` holds
:class:`~.errors.RegistryError` and :mod:`.platforms` picks an image from an index.

Nothing is imported here, so ``yurt exec`` on a local image never loads the
HTTP stack; :mod:`.client` and :mod:`.transport` are the only modules that import ``httpx``.
"""
